/*
 * fuzz_api.c: a libFuzzer harness for the whole public API.
 *
 * Design notes
 *   Input. A 4-byte header, then 7-byte op records [op, a, b, c, d, e, f]. The
 *   header picks 2 or 3 caller threads, the workers (1-4) and queue capacity
 *   (1-16) of pool 0, whether a second pool exists, two ctp_queue capacities,
 *   the thread-name prefix, the final shutdown's drain and grace, and the
 *   endgame (data[0] >> 5, 0: none). Record k goes to caller thread
 *   k % nthreads; each thread runs at most MAX_OPS. The callers start
 *   together on a barrier.
 *
 *   Races between firers and teardown. Op 14 with (b & 7) == 1 is a tree
 *   race: a root <- sub (<- leaf) tree with tasks queued with slow done
 *   callbacks at every level, a helper thread cancelling the sub (or leaf)
 *   while the caller cancels the root. The endgame runs once the callers
 *   are done and every task has finished (wait_idle until quiet): the same
 *   kind of tree on pool 0, one firer thread cancelling the sub (or leaf)
 *   then the root, a second firer cancelling the root (m & 2), while the
 *   main thread calls ctp_pool_shutdown (header's drain and grace) or
 *   ctp_pool_wait_idle (m & 1) and then ctp_pool_destroy at once. With
 *   m & 4 the tasks are relays, which submit follow-ups to their own pool
 *   ignoring their token, and the shutdown is (0, 0): the pool abandons
 *   them and is destroyed while they go on submitting. After destroy the
 *   harness never calls the pool; the firers' done callbacks do not either.
 *   The harness then waits (bounded) until the pool's workers stopped, no
 *   callback runs, and, at the very end, every thread this input started is
 *   gone (tu_threads_back_to).
 *
 *   Scheduling. Op 20 is a submit with scheduling options (some nested
 *   submits too; submit_ex says which bits pick what): a delay (0 to 2 ms,
 *   or "never", INT64_MAX), a priority (low, normal, high), a period (1 us
 *   to 1 ms), or one invalid field (priority out of range, a flags bit, a
 *   negative delay or period: -EINVAL, nothing accepted). Op 21 calls
 *   ctp_task_reschedule on a held handle (0 to 2 ms, "never", or negative:
 *   -EINVAL), and a task may reschedule itself while it runs. Every task
 *   that could otherwise live on, one with a delay of "never" or a
 *   periodic one with no end of its own, gets a lease: a token made under
 *   its drawn parent and given as its parent, which the reaper thread
 *   (one per input, from before the callers start until every pool has
 *   shut down) cancels 0.3 to 6 ms after the submit, unless its deadline
 *   (<= 1 ms) ends it anyway. A periodic task's own ends: its fn cancels
 *   its own token on its first, second or third run; besides, ops cancel
 *   it by handle, its parent fires, its deadline, a shutdown (which ends a
 *   series at its start), or a run of it cancels itself.
 *
 *   Objects live in slots (tasks, tokens, watches) shared by every thread, and
 *   by task functions, done callbacks and watchers. A slot is published once
 *   and never reused. Using a handle or a token pins its slot (a count); the
 *   "release" op closes the slot and whoever drops the last pin gives the
 *   object back, so no thread ever uses a released handle and nothing blocks
 *   on the harness's own bookkeeping (watchers and done callbacks may run on
 *   any thread, also inside a library call of another thread).
 *
 *   No input may hang. Durations are clamped to <= 1 ms (delays and
 *   reschedules to <= 2 ms). CTP_FOREVER (and INT64_MAX) are used only
 *   where a wake-up is guaranteed: caller threads waiting for a task, a
 *   submit waiting for room, wait_idle and shutdown (every task returns
 *   within a few ms; a series ends by its third run or by its lease, and
 *   a task delayed "never" by its lease or deadline, within 6 ms of its
 *   submit or a few runs: a drain and wait_idle wait for them),
 *   and a task sleeping or popping on its own token when the task has a
 *   deadline of <= 1 ms. A delay or reschedule of "never" is used only on
 *   a task with a lease or such a deadline. Task functions and done
 *   callbacks never wait without a short limit.
 *
 *   Invariants (abort() with a message, so libFuzzer reports a crash):
 *     - done runs at most once, only after fn returned, never for a refused
 *       submit, and exactly once for every accepted task (checked at the end;
 *       a periodic series: once, at its end, never during a run); its status
 *       is fn's return value or, if fn never ran, a reason that could have
 *       fired the task's token (a series that ran: its last run's value, or
 *       such a reason when it ended between runs);
 *     - fn of a one-shot task runs at most once; never after ctp_task_cancel
 *       answered 0 (a periodic task: no run starts after it, it was not
 *       answered during a run, and the state is DONE if the series ran,
 *       else CANCELLED); surely after it answered -EINPROGRESS; never for a
 *       refused submit;
 *     - scheduling: the runs of a periodic task never overlap (an in-run
 *       flag); no run starts before its due time: for a task with a delay,
 *       submit time (CLOCK_MONOTONIC before the call) + delay, run k of a
 *       series not before that + k * period; after a reschedule that
 *       answered 0, the next run not before the call's start + its delay
 *       (and the grid from there); a task whose timeout is not longer than
 *       its delay never runs (unless rescheduled); ctp_task_reschedule
 *       answers 0, -EINPROGRESS, -EALREADY or -ENOMEM (-EINVAL exactly for a
 *       negative delay or NULL), never 0 once done was called, for a
 *       one-shot task that started, or while one run of a series lasted
 *       from before the call to after it; a running task's reschedule of
 *       itself answers -EINPROGRESS, or -EALREADY once its token fired;
 *       invalid scheduling options (priority, flags, negative delay or
 *       period) are -EINVAL;
 *     - ctp_task_wait's status equals done's; after every pool has shut down,
 *       every held handle waits with timeout 0 successfully;
 *     - after ctp_pool_shutdown returned 0 (the final ones: once every pool
 *       has shut down, so that no task is inside a submit to it that waited
 *       for room and is being refused, which `submitted` counts for that
 *       while; or the endgame's): submitted == completed +
 *       cancelled + timed_out + dropped, queued == running == threads == 0,
 *       and each figure matches what the harness saw (accepted submits, fns
 *       run, -EAGAIN refusals, reasons given to done), a periodic series
 *       counted once: completed if it ran, else by its done's reason;
 *     - every returned code is one the contract lists for that call; bad
 *       arguments give -EINVAL; calls that wait for the pool give -EDEADLK
 *       from its tasks and done callbacks;
 *     - tokens: fired once (one 0 from ctp_token_cancel), children of a fired
 *       token are fired, the reason is sticky; a watch on a fired token runs
 *       at once; a watcher runs at most once and never after unwatch;
 *     - a ctp_token_cancel that answered 0 (not nested in a callback, no
 *       shutdown begun) returned after every task queued in its tree before
 *       it began had its done returned or started running, also when
 *       another thread fired a sub-token of the tree first and is still
 *       running its dones (two firers in one tree);
 *     - the endgame: a shutdown that returned 0 while firers run left the
 *       stats identity exact (no done of a task the firers caught still to
 *       come); destroy right after shutdown or wait_idle, with the firers
 *       still inside ctp_token_cancel, is safe (ASan/TSan); an abandoned
 *       relay's submits after the shutdown returned answer -ESHUTDOWN; every
 *       worker runs on_thread_stop, and no thread of the input outlives
 *       it (5 s bound);
 *     - queues: every item pushed with 0 is popped exactly once (the rest at
 *       the end), no item is popped twice or out of nowhere, -EAGAIN only for
 *       timeout 0, -ETIMEDOUT never early, a fired token wins, a closed queue
 *       refuses pushes.
 *   Everything is freed before LLVMFuzzerTestOneInput returns.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <unistd.h>

#include "ctpool.h"
#include "../testutil.h"

#define MAX_THREADS  3
#define MAX_OPS      48    /* per caller thread */
#define MAX_TASKS    512
#define MAX_TOKENS   64
#define MAX_WATCHES  32
#define MAX_ITEMS    1024
#define NQUEUES      2
#define MAX_DEPTH    2     /* tasks submitted by tasks, and theirs */
#define RELAY_MAX    4     /* follow-ups a relay task submits */
#define HDR          4
#define REC          7
#define COOKIE_MAGIC 0x5eedc0deu

#define FAIL(...) fail(__LINE__, __VA_ARGS__)

/* -DCTP_FUZZ_DEBUG (FUZZ_CFLAGS): counts of what the scheduling ops did,
 * printed after each input, to see that seeds reach them. */
#if defined(CTP_FUZZ_DEBUG)
enum { DBG_RUN0, DBG_RUNN, DBG_RS0, DBG_RSINP, DBG_RSALR, DBG_RSNOMEM,
	DBG_RSINV, DBG_REAP, DBG_BAD, DBG_SELFEND, DBG_N };
static atomic_ulong dbg[DBG_N];
#define DBG(k) atomic_fetch_add(&dbg[k], 1)
#else
#define DBG(k) ((void)0)
#endif

static void fail(int line, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), noreturn));

/* The input under test, saved by fail(): a sanitizer's crash path (TSan's
 * report of libFuzzer's signal handler) can hang before libFuzzer writes
 * the crash-* file. */
static const uint8_t *cur_data;
static size_t cur_size;

static void save_input(void)
{
	char name[64];
	FILE *f;

	snprintf(name, sizeof(name), "invariant-%d.input", (int)getpid());
	f = fopen(name, "wb");
	if (f == NULL)
		return;
	if (cur_data != NULL)
		(void)fwrite(cur_data, 1, cur_size, f);
	fclose(f);
	fprintf(stderr, "fuzz_api.c: input saved in %s\n", name);
}

static void fail(int line, const char *fmt, ...)
{
	va_list ap;

	save_input();
	fprintf(stderr, "fuzz_api.c:%d: invariant violated: ", line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

/* Aborts unless rc is 0 or one of the n codes that follow. */
#define EXPECT(call, rc, ...) expect(__LINE__, call, rc, \
	(const int[]){__VA_ARGS__}, sizeof((const int[]){__VA_ARGS__}) / sizeof(int))

static void expect(int line, const char *call, int rc, const int *ok, size_t n)
{
	if (rc == 0)
		return;
	for (size_t i = 0; i < n; i++)
		if (rc == ok[i])
			return;
	fail(line, "%s returned %d (%s), not allowed by the contract", call, rc,
	    ctp_strerror(rc));
}

/* ---- slots ---------------------------------------------------------------- */

/* st: bit 0 = closed (also before publication), the rest a pin count. */
typedef struct slot {
	atomic_uint st;
	void       *obj;   /* written before publication, then read-only */
} slot;

static void slot_init(slot *s)
{
	atomic_init(&s->st, 1u);
	s->obj = NULL;
}

static void slot_publish(slot *s, void *obj)
{
	s->obj = obj;
	atomic_store(&s->st, 0u);
}

static bool slot_pin(slot *s)
{
	unsigned v = atomic_load(&s->st);

	do {
		if (v & 1u)
			return false;
	} while (!atomic_compare_exchange_weak(&s->st, &v, v + 2u));
	return true;
}

/* Returns true when the caller must give the object back. */
static bool slot_unpin(slot *s)
{
	return atomic_fetch_sub(&s->st, 2u) == 3u;
}

static bool slot_close(slot *s)
{
	return atomic_fetch_or(&s->st, 1u) == 0u;
}

/* ---- per-input state ------------------------------------------------------ */

struct ctx;

typedef struct trec {           /* one submit attempt */
	struct ctx *ctx;
	int         pool;       /* index in ctx->pools */
	int         depth;      /* 0: submitted by a caller thread */
	uint8_t     beh, p1, p2, p3; /* what fn does */
	int64_t     deadline;   /* opts.timeout given */
	bool        has_done;
	bool        dflags_wait; /* done: check -EDEADLK */
	uint8_t     dcancel;    /* done: cancel this task slot (0xff: none) */
	bool        may_cancel; /* a reason -ECANCELED could fire (set early) */
	bool        may_timeout;
	atomic_bool cancel_tried;
	atomic_int  accepted;   /* 1 accepted, -1 refused */
	atomic_int  fn_started;
	atomic_int  fn_returned;
	atomic_int  ret;        /* fn's return value */
	atomic_int  done_calls;
	atomic_int  status;     /* done's status */
	atomic_int  wait_status; /* INT32_MIN: none yet */
	atomic_bool must_run;   /* cancel said -EINPROGRESS */
	atomic_bool must_not_run; /* cancel said 0 */
	atomic_bool suspect;    /* neither ran nor done when a tree cancel ended */
	atomic_int  done_returned;
	bool        relay;      /* fn submits follow-ups (relay()) */
	uint8_t     dyield;     /* done yields this often before returning */
	int         ptoken;     /* parent token slot, -1 none */
	atomic_ulong accept_seq; /* ctx->seq after submit returned 0 */
	void       *cookie;     /* arg, when done does not free it */
	slot        h;          /* the handle, when kept */
	/* scheduling (op 20 and nested scheduled submits; op 21) */
	int64_t     period;     /* opts.period given (> 0: a periodic series) */
	int64_t     delay;      /* opts.delay given */
	int64_t     t0;         /* CLOCK_MONOTONIC before the submit */
	int         self_end;   /* periodic: fn cancels its own token from
	                           run self_end on (0: never) */
	bool        self_resched; /* fn reschedules itself on its first run */
	bool        to_first;   /* 0 < timeout <= delay: times out unrun */
	atomic_bool resched_tried; /* a reschedule of it was called */
	atomic_int  in_run;     /* a run of fn is under way */
	atomic_int  runs_at_cancel0; /* fn runs when cancel answered 0, -1 */
	pthread_mutex_t lb_mu;  /* guards lb*, held across a reschedule */
	int64_t     lb;         /* run lb_run may not start before lb, */
	int         lb_run;     /* run lb_run + k not before lb + k * period */
	bool        lb_ok;      /* false: no bound known (being changed) */
	ctp_token  *lease;      /* a parent the reaper cancels at reap_at */
	int64_t     reap_at;
	atomic_bool lease_set;  /* lease and reap_at published */
	atomic_bool reaped;
} trec;

typedef struct cookie {
	unsigned magic;
	trec    *rec;
} cookie;

typedef struct tkrec {          /* a standalone token */
	int         parent;     /* token slot, -1 none, -2 a task's token */
	bool        task_anc;   /* a task token is an ancestor: any reason */
	atomic_int  zeros;      /* ctp_token_cancel answers of 0 */
	slot        s;
} tkrec;

typedef struct wrec {           /* a watch */
	struct ctx *ctx;
	int         token;      /* token slot */
	uint8_t     action;
	atomic_int  runs;
	atomic_int  runs_at_unwatch; /* -1 until unwatched */
	_Atomic(ctp_watch *) w;
} wrec;

typedef struct ctx {
	unsigned         nthreads;
	unsigned         npools;
	ctp_pool        *pools[2];
	unsigned         workers[2];
	atomic_uint      starts[2], stops[2];
	atomic_uint      start_mask[2], stop_mask[2];
	atomic_bool      shut_returned[2]; /* a caller's shutdown returned */
	atomic_bool      shut_started[2];  /* a caller's shutdown was called */
	atomic_uint      firing;  /* harness cancel calls under way */
	atomic_ulong     fire_epoch; /* harness cancel calls started */
	atomic_uint      rejected[2];
	ctp_queue       *q[NQUEUES];
	atomic_bool      q_closed[NQUEUES];
	atomic_uint      nitems;
	atomic_uchar     item_q[MAX_ITEMS];      /* queue + 1 */
	atomic_uchar     item_pushed[MAX_ITEMS]; /* 1 tried, 2 accepted, 3 refused */
	atomic_uchar     item_popped[MAX_ITEMS];
	atomic_uint      ntasks, ntokens, nwatches;
	atomic_ulong     seq;
	trec             tasks[MAX_TASKS];
	tkrec            tokens[MAX_TOKENS];
	wrec             watches[MAX_WATCHES];
	pthread_barrier_t barrier;
	const uint8_t   *ops[MAX_THREADS];
	size_t           nops[MAX_THREADS];
	unsigned         mode;    /* the endgame's, 0: none */
	uint32_t         seed;    /* a hash of the input */
	atomic_bool      endgame; /* set once every earlier task finished */
	atomic_int       active_cb; /* fn, done and watcher calls under way */
	bool             stats_ok[2];
	ctp_stats        fstats[2]; /* taken when the pool's shutdown returned 0 */
	tu_threads       base;    /* the process's threads before this input */
	pthread_t        reaper;  /* cancels leases when due (reaper_main) */
	pthread_mutex_t  rp_mu;   /* rp_kick, reaper_stop's wake-up */
	pthread_cond_t   rp_cv;
	bool             rp_kick; /* a lease was published */
	atomic_bool      reaper_stop;
} ctx;

/* Callbacks (done, watcher) this thread is inside: a ctp_token_cancel from
 * one may be nested in a fire of the same tree, which it does not wait for. */
static _Thread_local int cb_depth;

/* ---- small helpers -------------------------------------------------------- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A duration from a byte. Long ones only when the caller allows them. */
static int64_t dur(uint8_t x, bool forever_ok)
{
	static const int64_t t[8] = {
		0, CTP_USEC(1), CTP_USEC(20), CTP_USEC(100), CTP_USEC(300),
		CTP_MSEC(1), CTP_FOREVER, INT64_MAX,
	};
	int64_t d = t[x & 7];

	if (!forever_ok && (d == CTP_FOREVER || d == INT64_MAX))
		d = CTP_USEC(200);
	return d;
}

static int64_t add_sat(int64_t a, int64_t b) /* a, b >= 0 */
{
	return b > INT64_MAX - a ? INT64_MAX : a + b;
}

/* A task's delay (opts.delay or a reschedule's): small ones, or "never"
 * (INT64_MAX), which the harness allows only with a guaranteed end (a
 * lease or a deadline of <= 1 ms; huge_ok). */
static int64_t sdelay(uint8_t x, bool huge_ok)
{
	static const int64_t t[8] = {
		0, CTP_USEC(1), CTP_USEC(20), CTP_USEC(100), CTP_USEC(500),
		CTP_MSEC(1), CTP_MSEC(2), INT64_MAX,
	};
	int64_t d = t[x & 7];

	if (!huge_ok && d == INT64_MAX)
		d = CTP_MSEC(2);
	return d;
}

/* A periodic task's period. */
static int64_t speriod(uint8_t x)
{
	static const int64_t t[4] = {
		CTP_USEC(1), CTP_USEC(20), CTP_USEC(200), CTP_MSEC(1),
	};

	return t[x & 3];
}

/* When the reaper cancels a lease, after the submit. */
static int64_t sreap(uint8_t x)
{
	static const int64_t t[4] = {
		CTP_USEC(300), CTP_MSEC(1), CTP_MSEC(3), CTP_MSEC(6),
	};

	return t[x & 3];
}

static unsigned pick(atomic_uint *count, unsigned max, uint8_t b)
{
	unsigned n = atomic_load(count);

	if (n > max)
		n = max;
	return n == 0 ? 0 : b % n;
}

static bool is_reason(int r)
{
	return r == -ECANCELED || r == -ETIMEDOUT || r == -ESHUTDOWN;
}

static void check_state(int st)
{
	if (st != CTP_TASK_QUEUED && st != CTP_TASK_RUNNING &&
	    st != CTP_TASK_DONE && st != CTP_TASK_CANCELLED)
		FAIL("ctp_task_state returned %d", st);
}

/* ---- tokens --------------------------------------------------------------- */

static ctp_token *token_pin(ctx *c, unsigned i)
{
	return slot_pin(&c->tokens[i].s) ? c->tokens[i].s.obj : NULL;
}

static void token_unpin(ctx *c, unsigned i)
{
	if (slot_unpin(&c->tokens[i].s))
		ctp_token_release(c->tokens[i].s.obj);
}

static void token_close(ctx *c, unsigned i)
{
	if (slot_close(&c->tokens[i].s))
		ctp_token_release(c->tokens[i].s.obj);
}

/* Creates a token under parent (slot index, -1 none, -2 = ptok, a task's).
 * Returns its slot, -1 if none was left (a slot whose create failed stays
 * closed: pinning it fails). */
static int token_new(ctx *c, int parent, ctp_token *ptok)
{
	unsigned i = atomic_fetch_add(&c->ntokens, 1);
	ctp_token *pt = ptok, *t = NULL;
	int pre = 0, rc;

	if (i >= MAX_TOKENS)
		return -1;
	c->tokens[i].parent = parent;
	c->tokens[i].task_anc = parent == -2;
	if (parent >= 0) {
		pt = token_pin(c, (unsigned)parent);
		if (pt == NULL) {
			c->tokens[i].parent = -1;
		} else {
			c->tokens[i].task_anc = c->tokens[parent].task_anc;
		}
	}
	if (pt != NULL)
		pre = ctp_token_reason(pt);
	rc = ctp_token_create(&t, pt);
	EXPECT("ctp_token_create", rc, -ENOMEM);
	if (rc == 0) {
		int r = ctp_token_reason(t);

		if (pre != 0 && r == 0)
			FAIL("token created under a fired parent is not fired");
		if (r != 0 && !is_reason(r))
			FAIL("ctp_token_reason gave %d", r);
		slot_publish(&c->tokens[i].s, t);
	}
	if (parent >= 0 && pt != NULL)
		token_unpin(c, (unsigned)parent);
	return (int)i;
}

/* After ctp_token_cancel(i) returned 0: i and every child slot have fired. */
static void token_check_tree(ctx *c, unsigned i, int depth)
{
	unsigned n = atomic_load(&c->ntokens);
	ctp_token *t = token_pin(c, i);

	if (t != NULL) {
		if (!ctp_token_cancelled(t) || ctp_token_reason(t) == 0)
			FAIL("token %u not fired after its tree was cancelled", i);
		token_unpin(c, i);
	}
	if (n > MAX_TOKENS)
		n = MAX_TOKENS;
	for (unsigned k = 0; k < n && depth < 8; k++) {
		bool child;

		/* parent is written before the slot is published */
		if (!slot_pin(&c->tokens[k].s))
			continue;
		child = c->tokens[k].parent == (int)i;
		token_unpin(c, k);
		if (child)
			token_check_tree(c, k, depth + 1);
	}
}

static void tasks_check_after_tree_cancel(ctx *c, unsigned tok, unsigned long s);

static int token_cancel_checked(ctx *c, unsigned i)
{
	ctp_token *t = token_pin(c, i);
	unsigned long s;
	int rc;

	unsigned long e0;
	bool alone, clean;

	if (t == NULL)
		return 1;
	e0 = atomic_fetch_add(&c->fire_epoch, 1) + 1;
	alone = atomic_fetch_add(&c->firing, 1) == 0;
	s = atomic_fetch_add(&c->seq, 1);
	rc = ctp_token_cancel(t);
	/* Nothing else fired anything while this call ran: then it alone
	 * finished every queued task of the tree. And a cancel that fired the
	 * tree (0) returns only once every queued task in it has had its done,
	 * also those under a sub-token that another thread fired first and is
	 * still finishing: it waits for that firer. Except a cancel nested in a
	 * callback run by a fire of the same tree on this thread, which does not
	 * wait for its own outer fire. Neither once a shutdown began: its drop
	 * step finishes queued tasks on its own. */
	clean = ((alone && atomic_load(&c->fire_epoch) == e0) ||
	    (rc == 0 && cb_depth == 0)) &&
	    !atomic_load(&c->shut_started[0]) && !atomic_load(&c->shut_started[1]);
	atomic_fetch_sub(&c->firing, 1);
	EXPECT("ctp_token_cancel", rc, -EALREADY);
	if (rc == 0 && atomic_fetch_add(&c->tokens[i].zeros, 1) != 0)
		FAIL("ctp_token_cancel answered 0 twice for one token");
	token_unpin(c, i);
	/* With 0 this call fired the tree and marked all of it before it
	 * returned; with -EALREADY another firer's cascade may still be on
	 * its way down, which the contract allows. */
	if (rc == 0)
		token_check_tree(c, i, 0);
	if (clean)
		tasks_check_after_tree_cancel(c, i, s);
	return rc;
}

/* ---- watches -------------------------------------------------------------- */

static void watcher(void *arg)
{
	wrec *w = arg;
	ctx *c = w->ctx;

	atomic_fetch_add(&c->active_cb, 1);
	cb_depth++;
	if (atomic_fetch_add(&w->runs, 1) != 0)
		FAIL("watcher ran twice");
	if (atomic_load(&w->runs_at_unwatch) >= 0)
		FAIL("watcher ran after ctp_token_unwatch returned");
	switch (w->action % 4) {
	case 1: /* cancel another token: fires more watchers, never blocks */
		token_cancel_checked(c, pick(&c->ntokens, MAX_TOKENS, w->action));
		break;
	case 2: /* unwatch itself from inside: returns without waiting */
	{
		ctp_watch *self = atomic_exchange(&w->w, NULL);

		if (self != NULL) {
			atomic_store(&w->runs_at_unwatch, 1);
			ctp_token_unwatch(self);
		}
		break;
	}
	case 3: /* a non-blocking push */
	{
		ctp_queue *q = c->q[w->action % NQUEUES];
		int rc = ctp_queue_push(q, &c->barrier, NULL, 0);

		EXPECT("ctp_queue_push (watcher)", rc, -EAGAIN, -ESHUTDOWN);
		if (rc == 0) /* not tracked: popped or drained later */
			;
		break;
	}
	default:
		break;
	}
	cb_depth--;
	atomic_fetch_sub(&c->active_cb, 1);
}

static void watch_new(ctx *c, unsigned tok, uint8_t action)
{
	unsigned i = atomic_fetch_add(&c->nwatches, 1);
	ctp_token *t;
	ctp_watch *wp = NULL;
	wrec *w;
	int pre, rc;

	if (i >= MAX_WATCHES)
		return;
	w = &c->watches[i];
	w->token = (int)tok;
	w->action = action;
	t = token_pin(c, tok);
	if (t == NULL)
		return;
	pre = ctp_token_reason(t);
	rc = ctp_token_watch(t, watcher, w, &wp);
	EXPECT("ctp_token_watch", rc, -ENOMEM);
	if (rc == 0) {
		if (pre != 0 && atomic_load(&w->runs) != 1)
			FAIL("watch on a fired token did not run at once");
		atomic_store(&w->w, wp);
	}
	token_unpin(c, tok);
}

static void watch_drop(ctx *c, unsigned i)
{
	wrec *w = &c->watches[i];
	ctp_watch *wp = atomic_exchange(&w->w, NULL);

	if (wp == NULL)
		return;
	ctp_token_unwatch(wp);
	atomic_store(&w->runs_at_unwatch, atomic_load(&w->runs));
}

/* ---- queues --------------------------------------------------------------- */

/* The token (may be NULL) has fired with rc. */
static bool tok_says(ctp_token *tok, int rc)
{
	return tok != NULL && ctp_token_reason(tok) == rc;
}

/* -ECANCELED only from the token; -ETIMEDOUT from the token (a task's
 * deadline) or a wait that ran out, never early. */
static void check_wait_rc(const char *call, int rc, ctp_token *tok,
                          int64_t to, int64_t t0)
{
	if (rc == -ECANCELED && !tok_says(tok, rc))
		FAIL("%s returned -ECANCELED its token does not have", call);
	if (rc == -ETIMEDOUT && !tok_says(tok, rc) &&
	    (to == 0 || to == CTP_FOREVER || now_ns() - t0 < to))
		FAIL("%s timed out early (timeout %lld, waited %lld)", call,
		    (long long)to, (long long)(now_ns() - t0));
}

static void q_push(ctx *c, unsigned qi, ctp_token *tok, int64_t to)
{
	unsigned id = atomic_fetch_add(&c->nitems, 1);
	int pre = tok != NULL ? ctp_token_reason(tok) : 0;
	bool closed = atomic_load(&c->q_closed[qi]);
	int64_t t0 = now_ns();
	int rc;

	if (id >= MAX_ITEMS)
		return;
	atomic_store(&c->item_q[id], (unsigned char)(qi + 1));
	atomic_store(&c->item_pushed[id], 1);
	rc = ctp_queue_push(c->q[qi], (void *)(uintptr_t)id, tok, to);
	atomic_store(&c->item_pushed[id], rc == 0 ? 2 : 3);
	EXPECT("ctp_queue_push", rc, -EAGAIN, -ETIMEDOUT, -ESHUTDOWN,
	    -ECANCELED);
	if (pre != 0 && rc != pre)
		FAIL("push with a fired token (%d) returned %d", pre, rc);
	if (rc == -EAGAIN && to != 0)
		FAIL("push returned -EAGAIN with timeout %lld", (long long)to);
	if (closed && pre == 0 && rc != -ESHUTDOWN && !tok_says(tok, rc))
		FAIL("push on a closed queue returned %d", rc);
	check_wait_rc("push", rc, tok, to, t0);
}

static void q_take(ctx *c, unsigned qi, void *item)
{
	uintptr_t id = (uintptr_t)item;

	if (item == &c->barrier) /* a watcher's push */
		return;
	if (id >= MAX_ITEMS || atomic_load(&c->item_pushed[id]) == 0)
		FAIL("popped an item nobody pushed: %p", item);
	if (atomic_load(&c->item_q[id]) != qi + 1)
		FAIL("item %lu popped from the wrong queue", (unsigned long)id);
	if (atomic_load(&c->item_pushed[id]) == 3)
		FAIL("item %lu popped although its push failed",
		    (unsigned long)id);
	if (atomic_fetch_add(&c->item_popped[id], 1) != 0)
		FAIL("item %lu popped twice", (unsigned long)id);
}

static void q_pop(ctx *c, unsigned qi, ctp_token *tok, int64_t to)
{
	int pre = tok != NULL ? ctp_token_reason(tok) : 0;
	bool closed = atomic_load(&c->q_closed[qi]);
	void *item = NULL;
	int64_t t0 = now_ns();
	int rc;

	rc = ctp_queue_pop(c->q[qi], &item, tok, to);
	EXPECT("ctp_queue_pop", rc, -EAGAIN, -ETIMEDOUT, -ESHUTDOWN,
	    -ECANCELED);
	if (rc == 0)
		q_take(c, qi, item);
	if (pre != 0 && rc != pre)
		FAIL("pop with a fired token (%d) returned %d", pre, rc);
	if (rc == -EAGAIN && (to != 0 || closed))
		FAIL("pop returned -EAGAIN (timeout %lld, closed %d)",
		    (long long)to, closed);
	if (rc == -ETIMEDOUT && closed && !tok_says(tok, rc))
		FAIL("pop on a closed queue timed out");
	check_wait_rc("pop", rc, tok, to, t0);
}

/* ---- tasks ---------------------------------------------------------------- */

static ctp_task *task_pin(ctx *c, unsigned i)
{
	return slot_pin(&c->tasks[i].h) ? c->tasks[i].h.obj : NULL;
}

static void task_unpin(ctx *c, unsigned i)
{
	if (slot_unpin(&c->tasks[i].h))
		ctp_task_release(c->tasks[i].h.obj);
}

static void task_close(ctx *c, unsigned i)
{
	if (slot_close(&c->tasks[i].h))
		ctp_task_release(c->tasks[i].h.obj);
}

static void record_wait_status(trec *r, int st)
{
	int none = INT32_MIN;

	if (!atomic_compare_exchange_strong(&r->wait_status, &none, st) &&
	    none != st)
		FAIL("ctp_task_wait gave status %d, earlier %d", st, none);
}

/* Cancels task slot i. self: the caller is that task's fn. */
static void task_cancel_checked(ctx *c, unsigned i, bool self)
{
	trec *r = &c->tasks[i];
	ctp_task *h = task_pin(c, i);
	int rc, st;

	if (h == NULL)
		return;
	atomic_store(&r->cancel_tried, true);
	atomic_fetch_add(&c->fire_epoch, 1);
	atomic_fetch_add(&c->firing, 1);
	rc = ctp_task_cancel(h);
	atomic_fetch_sub(&c->firing, 1);
	EXPECT("ctp_task_cancel", rc, -EINPROGRESS, -EALREADY);
	if (self && rc == 0)
		FAIL("a running task's cancel of itself answered 0");
	if (rc == 0) {
		/* a periodic series: 0 between runs, and no run after it */
		int runs = atomic_load(&r->fn_started), none = -1;

		atomic_store(&r->must_not_run, true);
		if (r->period == 0 && runs != 0)
			FAIL("cancel answered 0 but fn had started");
		if (r->period > 0 && atomic_load(&r->in_run))
			FAIL("cancel of a periodic task answered 0 during a run");
		if (!atomic_compare_exchange_strong(&r->runs_at_cancel0, &none,
		    runs))
			FAIL("ctp_task_cancel answered 0 twice for one task");
		if (r->has_done && atomic_load(&r->done_calls) != 1)
			FAIL("cancel answered 0 before done returned");
		if (r->has_done && atomic_load(&r->status) != -ECANCELED)
			FAIL("cancel answered 0, done got %d",
			    atomic_load(&r->status));
		st = ctp_task_state(h);
		if (st != (runs != 0 ? CTP_TASK_DONE : CTP_TASK_CANCELLED))
			FAIL("state %d after cancel answered 0 (%d runs, "
			    "period %lld)", st, runs, (long long)r->period);
	} else if (rc == -EINPROGRESS) {
		atomic_store(&r->must_run, true);
		st = ctp_task_state(h);
		if (st != CTP_TASK_RUNNING && st != CTP_TASK_DONE)
			FAIL("state %d after cancel answered -EINPROGRESS", st);
	}
	task_unpin(c, i);
}

static void task_wait_checked(ctx *c, unsigned i, int64_t to, bool self)
{
	trec *r = &c->tasks[i];
	ctp_task *h = task_pin(c, i);
	int st = INT32_MIN, rc, s;

	if (h == NULL)
		return;
	rc = ctp_task_wait(h, to, (to & 1) ? NULL : &st);
	if (self) {
		if (rc != -EDEADLK)
			FAIL("ctp_task_wait on itself returned %d", rc);
	} else {
		EXPECT("ctp_task_wait", rc, -ETIMEDOUT);
		if (rc == -ETIMEDOUT && (to == CTP_FOREVER || to == INT64_MAX))
			FAIL("ctp_task_wait without limit timed out");
	}
	if (rc == 0) {
		if (r->has_done && atomic_load(&r->done_calls) != 1)
			FAIL("ctp_task_wait returned before done did");
		s = ctp_task_state(h);
		if (s != CTP_TASK_DONE && s != CTP_TASK_CANCELLED)
			FAIL("state %d after a successful wait", s);
		if ((s == CTP_TASK_DONE) != (atomic_load(&r->fn_returned) != 0))
			FAIL("state %d but fn returned %d", s,
			    atomic_load(&r->fn_returned));
		if (st != INT32_MIN)
			record_wait_status(r, st);
	}
	task_unpin(c, i);
}

/* Reschedules task slot i by d (negative: expects -EINVAL). self: the
 * caller is that task's fn (it runs: -EINPROGRESS, or -EALREADY once its
 * token fired). The due-time bound (lb) is invalid while the call runs
 * and the lock is held across it, so a run that starts meanwhile checks
 * against what the call did; reschedules of one task are serialised. */
static int resched_checked(ctx *c, unsigned i, int64_t d, bool self,
                           ctp_token *tok)
{
	trec *r = &c->tasks[i];
	ctp_task *h = task_pin(c, i);
	int64_t lb, t0;
	int lb_run, dc0, fs0, fs1, ir0, ir1, rc;
	bool lb_ok;

	if (h == NULL)
		return 1;
	/* "never" only where something ends the task: its lease (the
	 * reaper) or a deadline of <= 1 ms */
	if (d == INT64_MAX && r->lease == NULL &&
	    (r->deadline <= 0 || r->deadline > CTP_MSEC(1)))
		d = CTP_MSEC(2);
	pthread_mutex_lock(&r->lb_mu);
	lb = r->lb;
	lb_run = r->lb_run;
	lb_ok = r->lb_ok;
	r->lb_ok = false;
	atomic_store(&r->resched_tried, true);
	dc0 = atomic_load(&r->done_calls);
	fs0 = atomic_load(&r->fn_started);
	ir0 = atomic_load(&r->in_run);
	t0 = now_ns();
	rc = ctp_task_reschedule(h, d);
	ir1 = atomic_load(&r->in_run); /* before fs1: a new run counts first */
	fs1 = atomic_load(&r->fn_started);
	if (d < 0) {
		if (rc != -EINVAL)
			FAIL("ctp_task_reschedule(%lld) returned %d, expected "
			    "-EINVAL", (long long)d, rc);
	} else {
		EXPECT("ctp_task_reschedule", rc, -EINPROGRESS, -EALREADY,
		    -ENOMEM);
	}
	if (rc == 0) {
		/* the next run (fs1 or, if it started before we looked,
		 * later: a weaker bound) is due d from the call */
		r->lb = add_sat(t0, d);
		r->lb_run = fs1;
		r->lb_ok = true;
	} else if (!(rc == -EINPROGRESS && r->period > 0)) {
		/* no effect; a periodic task's next run is due d after
		 * the call, from a run that may have started or not: no
		 * bound until the next reschedule that answers 0 */
		r->lb = lb;
		r->lb_run = lb_run;
		r->lb_ok = lb_ok;
	}
	pthread_mutex_unlock(&r->lb_mu);
	switch (rc) {
	case 0: DBG(DBG_RS0); break;
	case -EINPROGRESS: DBG(DBG_RSINP); break;
	case -EALREADY: DBG(DBG_RSALR); break;
	case -ENOMEM: DBG(DBG_RSNOMEM); break;
	default: DBG(DBG_RSINV); break;
	}
	if (self) {
		if (rc != -EINPROGRESS && rc != -EALREADY)
			FAIL("a running task's reschedule of itself returned %d",
			    rc);
		if (rc == -EALREADY && !ctp_token_cancelled(tok))
			FAIL("reschedule of itself -EALREADY, token not fired");
	}
	if (rc == 0 && dc0 != 0)
		FAIL("reschedule answered 0 after done was called");
	if (rc == 0 && r->period == 0 && fs0 != 0)
		FAIL("reschedule answered 0 for a one-shot task that had run");
	if (rc == 0 && ir0 && ir1 && fs0 == fs1)
		FAIL("reschedule answered 0 while a run was under way");
	task_unpin(c, i);
	return rc;
}

static int task_fn(void *arg, ctp_token *token);
static void task_done(void *arg, int status);

/* What the tree race and the endgame fix in a submit; the bytes give the
 * rest (behaviour, handle kept or not). Always a done, no deadline. */
typedef struct forced {
	unsigned pool;
	int      parent;   /* token slot, -1 none; own: the task's own token */
	bool     own;
	bool     relay;
	uint8_t  dyield;
} forced;

static void reaper_kick(ctx *c, bool stop);

/* One invalid field of a scheduled submit (the others as drawn). */
static void bad_sched(ctp_task_opts *o, uint8_t v)
{
	switch (v & 15) {
	case 0: o->priority = 2; break;
	case 1: o->priority = -2; break;
	case 2: o->priority = INT_MAX; break; /* was UB in submit's check */
	case 3: o->priority = INT_MIN; break;
	case 4: o->flags = 1; break;
	case 5: o->flags = 0x80000000u; break;
	case 6: o->flags = ~0u; break;
	case 7: o->delay = -1; break;
	case 8: o->delay = INT64_MIN; break;
	case 9: o->period = -1; break;
	case 10: o->period = INT64_MIN; break;
	case 11: o->delay = -1; o->period = CTP_MSEC(1); break;
	case 12: o->priority = 3; o->delay = CTP_USEC(1); break;
	case 13: o->flags = 2; o->period = CTP_USEC(1); break;
	case 14: o->period = -2; o->delay = CTP_USEC(1); break;
	default: o->delay = CTP_USEC(1); o->period = -CTP_USEC(1); break;
	}
}

/* Submits a task described by the bytes (f: with what it fixes); from a
 * caller thread (self NULL) or from a task (self = its record, tok = its
 * token). With sched (op 20, some nested submits) the spare bits pick the
 * scheduling options: sb = b[0] >> 1: delay (sb & 7, sdelay), priority
 * ((sb >> 3) & 3: normal, low, high, normal; 3 with delay index 7: one
 * invalid field, bad_sched(sc), expecting -EINVAL), periodic (sb & 0x40);
 * sc = b[4] >> 4: the period (sc & 3), and (sc >> 2) & 3: for a periodic
 * task its end (0: a lease, 1: fn cancels its token on its first run and
 * a lease, 2: on its third run, 3: reschedules itself on its first run,
 * cancels on its second), for a one-shot one a lease when 3; a one-shot
 * one with sc & 3 == 3 reschedules itself when it runs. The lease's reap
 * time is sreap(b[2] >> 6). Every task with a huge delay or periodic
 * without an end of its own gets a lease unless its deadline is <= 1 ms.
 * Returns the submit's answer, 1 when no slot was left. */
static int submit_ex(ctx *c, trec *self, ctp_token *tok, const uint8_t *b,
                     const forced *f, bool sched)
{
	unsigned i = atomic_fetch_add(&c->ntasks, 1);
	unsigned pi = (b[0] & 1) % c->npools;
	ctp_task_opts o = {0};
	ctp_task *h = NULL;
	bool keep = !(b[4] & 1), use_opts = (b[4] & 6) != 6;
	bool from_task = self != NULL, shut, lease = false;
	int ptoken = -1, pre = 0, bad = -1, rc;
	int64_t t0;
	cookie *ck;
	trec *r;

	if (i >= MAX_TASKS)
		return 1;
	/* once the endgame began a pool may be destroyed under any other
	 * pool's task: follow-ups go to their own pool only */
	if (from_task && atomic_load(&c->endgame))
		pi = (unsigned)self->pool;
	if (f != NULL)
		pi = f->pool;
	r = &c->tasks[i];
	r->ctx = c;
	r->pool = (int)pi;
	r->depth = from_task ? self->depth + 1 : 0;
	r->beh = b[1];
	r->p1 = b[2];
	r->p2 = b[5];
	r->p3 = b[3];
	r->dcancel = (b[5] & 0x30) == 0x30 ? b[2] : 0xff;
	r->dflags_wait = (b[5] & 0xc0) == 0xc0;
	ck = malloc(sizeof(*ck));
	if (ck == NULL)
		abort();
	ck->magic = COOKIE_MAGIC;
	ck->rec = r;
	if (f != NULL) {
		o.done = task_done;
		o.timeout = 0;
		o.queue_wait = from_task ? dur(b[3] >> 3, false) : CTP_FOREVER;
		o.parent = f->own ? tok : NULL;
		if (f->parent >= 0) {
			o.parent = token_pin(c, (unsigned)f->parent);
			if (o.parent != NULL)
				ptoken = f->parent;
		}
		use_opts = true;
		r->relay = f->relay;
		r->dyield = f->dyield;
		r->dcancel = 0xff;
		r->dflags_wait = false;
	} else if (use_opts) {
		o.done = (b[4] & 8) ? NULL : task_done;
		o.timeout = dur(b[3], !from_task);
		o.queue_wait = dur(b[3] >> 3, !from_task);
		switch (b[3] >> 6) {
		case 1:
			ptoken = (int)pick(&c->ntokens, MAX_TOKENS, b[2]);
			o.parent = token_pin(c, (unsigned)ptoken);
			if (o.parent == NULL)
				ptoken = -1;
			break;
		case 2:
			o.parent = tok; /* the submitting task's own token */
			break;
		default:
			break;
		}
	}
	r->has_done = o.done != NULL;
	r->deadline = o.timeout;
	r->may_cancel = o.parent != NULL;
	r->may_timeout = (o.timeout > 0 && o.timeout != INT64_MAX) ||
	    (o.parent != NULL && o.parent == tok) ||
	    (ptoken >= 0 && c->tokens[ptoken].task_anc);
	r->cookie = r->has_done ? NULL : ck;
	r->ptoken = ptoken;
	if (sched && f == NULL && use_opts) {
		uint8_t sb = b[0] >> 1, sc = b[4] >> 4, end = (sc >> 2) & 3;
		bool finite = o.timeout > 0 && o.timeout <= CTP_MSEC(1);
		unsigned pidx = (sb >> 3) & 3;

		if (pidx == 3 && (sb & 7) == 7) {
			bad = sc;
		} else {
			o.delay = sdelay(sb, true);
			o.priority = pidx == 1 ? CTP_PRIORITY_LOW :
			    pidx == 2 ? CTP_PRIORITY_HIGH : CTP_PRIORITY_NORMAL;
			if (sb & 0x40) {
				o.period = speriod(sc);
				r->self_end = end == 1 ? 1 : end == 2 ? 3 :
				    end == 3 ? 2 : 0;
				r->self_resched = end == 3;
				lease = end <= 1;
			} else {
				r->self_resched = (sc & 3) == 3;
				lease = end == 3;
			}
			if (!finite && (o.delay == INT64_MAX ||
			    (o.period > 0 && r->self_end == 0)))
				lease = true;
		}
	}
	if (lease) {
		/* a parent the reaper cancels (under the drawn parent, so
		 * that one's cascade still reaches the task) */
		ctp_token *lt = NULL;

		rc = ctp_token_create(&lt, o.parent);
		EXPECT("ctp_token_create (lease)", rc, -ENOMEM);
		if (rc == 0) {
			r->lease = lt;
			o.parent = lt;
			r->may_cancel = true;
		} else if (o.timeout <= 0 || o.timeout > CTP_MSEC(1)) {
			/* nothing would end it: an ordinary task */
			lease = false;
			o.period = 0;
			r->self_end = 0;
			o.delay = sdelay((uint8_t)(b[0] >> 1), false);
		}
	}
	r->period = o.period;
	r->delay = o.delay;
	r->to_first = o.timeout > 0 && o.timeout <= o.delay;
	if (o.parent != NULL)
		pre = ctp_token_reason(o.parent);
	shut = atomic_load(&c->shut_returned[pi]);
	if (bad >= 0) {
		bad_sched(&o, (uint8_t)bad);
		rc = ctp_pool_submit(c->pools[pi], task_fn, ck, &o,
		    keep ? &h : NULL);
		if (rc != -EINVAL)
			FAIL("a submit with delay %lld period %lld priority %d "
			    "flags %#x returned %d, expected -EINVAL",
			    (long long)o.delay, (long long)o.period, o.priority,
			    o.flags, rc);
		DBG(DBG_BAD);
		atomic_store(&r->accepted, -1);
		r->cookie = NULL;
		free(ck);
		if (ptoken >= 0)
			token_unpin(c, (unsigned)ptoken);
		return rc;
	}
	/* no run before this + delay (fn checks; a reschedule moves it) */
	t0 = now_ns();
	r->t0 = t0;
	r->lb = add_sat(t0, o.delay);
	r->lb_run = 0;
	r->lb_ok = true;
	rc = ctp_pool_submit(c->pools[pi], task_fn, ck, use_opts ? &o : NULL,
	    keep ? &h : NULL);
	EXPECT("ctp_pool_submit", rc, -EAGAIN, -ESHUTDOWN, -ENOMEM,
	    -ECANCELED, -ETIMEDOUT);
	if (rc == -ETIMEDOUT && !r->may_timeout)
		FAIL("submit returned -ETIMEDOUT without a parent that could");
	if (rc == -ECANCELED && o.parent == NULL)
		FAIL("submit returned -ECANCELED without a parent");
	if (shut && rc != -ESHUTDOWN && !(pre != 0 && rc == pre))
		FAIL("submit after shutdown returned %d", rc);
	if (pre != 0 && rc != pre && rc != -ESHUTDOWN)
		FAIL("submit under a fired parent (%d) returned %d", pre, rc);
	if (rc == -EAGAIN) {
		atomic_fetch_add(&c->rejected[pi], 1);
	}
	if (rc == 0) {
		atomic_store(&r->accepted, 1);
		atomic_store(&r->accept_seq, atomic_fetch_add(&c->seq, 1));
		if (keep)
			slot_publish(&r->h, h);
		if (r->lease != NULL) {
			r->reap_at = add_sat(t0, sreap((uint8_t)(b[2] >> 6)));
			atomic_store(&r->lease_set, true);
			reaper_kick(c, false);
		}
	} else {
		atomic_store(&r->accepted, -1);
		r->cookie = NULL;
		free(ck); /* not accepted: the caller still owns arg */
		if (r->lease != NULL) {
			ctp_token_release(r->lease);
			r->lease = NULL;
		}
	}
	if (ptoken >= 0)
		token_unpin(c, (unsigned)ptoken);
	return rc;
}

static void submit(ctx *c, trec *self, ctp_token *tok, const uint8_t *b,
                   bool sched)
{
	(void)submit_ex(c, self, tok, b, NULL, sched);
}

/* After a ctp_token_cancel(tok) that began at seq s returned, with nothing
 * else firing meanwhile or having fired tok itself (see
 * token_cancel_checked): each task accepted before, under tok, either ran
 * (perhaps it just started) or its done has returned. */
static void tasks_check_after_tree_cancel(ctx *c, unsigned tok, unsigned long s)
{
	unsigned n = atomic_load(&c->ntasks);

	if (n > MAX_TASKS)
		n = MAX_TASKS;
	for (unsigned i = 0; i < n; i++) {
		trec *r = &c->tasks[i];
		int p, hops = 0;

		if (atomic_load(&r->accept_seq) >= s)
			continue; /* not accepted before the cancel began */
		if (!r->has_done || r->may_timeout ||
		    atomic_load(&r->cancel_tried))
			continue;
		for (p = r->ptoken; p >= 0 && p != (int)tok && hops < 40; hops++)
			p = c->tokens[p].parent;
		if (p != (int)tok || c->tokens[tok].task_anc)
			continue;
		if (!atomic_load(&r->fn_started) &&
		    !atomic_load(&r->done_returned))
			atomic_store(&r->suspect, true);
	}
}

/* The EDEADLK rules, from inside a task or a done callback of pool pi. */
static void check_deadlk(ctx *c, unsigned pi, bool in_fn)
{
	int rc;

	rc = ctp_pool_wait_idle(c->pools[pi], (int64_t)CTP_USEC(10));
	if (rc != -EDEADLK)
		FAIL("wait_idle from %s of its pool returned %d",
		    in_fn ? "a task" : "a done", rc);
	rc = ctp_pool_shutdown(c->pools[pi], 0, 0);
	if (rc != -EDEADLK)
		FAIL("shutdown from %s of its pool returned %d",
		    in_fn ? "a task" : "a done", rc);
	if (c->npools == 2 && in_fn && !atomic_load(&c->endgame)) {
		/* another pool's thread is an ordinary thread for this one */
		rc = ctp_pool_wait_idle(c->pools[1 - pi], 0);
		EXPECT("ctp_pool_wait_idle (other pool)", rc, -ETIMEDOUT);
	}
}

/* A relay's fn: submits follow-ups to its own pool, a short nap apart,
 * until one is refused or RELAY_MAX went in, ignoring its token meanwhile.
 * Under the endgame's shutdown(pool, 0, 0) the pool abandons it and is
 * destroyed while it goes on: each submit must then answer -ESHUTDOWN
 * (submit_ex checks it once the shutdown returned), and nothing may crash
 * or leak. Follow-ups are relays again up to MAX_DEPTH, then plain tasks or
 * short sleeps on their token. */
static int relay(ctx *c, trec *r, ctp_token *tok)
{
	int rc = 0;

	for (unsigned k = 0; k < RELAY_MAX; k++) {
		uint8_t b[6] = { 0, (uint8_t)((r->beh >> k) & 1), r->p1, r->p3,
		    (uint8_t)(r->p2 >> k), r->p2 };
		forced f = { .pool = (unsigned)r->pool, .parent = -1,
		    .own = (r->p1 >> k) & 1, .relay = r->depth + 1 < MAX_DEPTH,
		    .dyield = r->dyield };
		struct timespec nap = { 0, 20000 };

		rc = submit_ex(c, r, tok, b, &f, false);
		if (rc != 0)
			break;
		nanosleep(&nap, NULL);
	}
	return rc;
}

/* One thing a task's fn does; returns the last library result. */
static int task_act(ctx *c, trec *r, unsigned self, ctp_token *tok)
{
	bool dl = r->deadline > 0 && r->deadline <= CTP_MSEC(1);
	int64_t d = dur(r->p1, dl);
	int rc = 0, pre;
	unsigned k;

	if (r->relay)
		return relay(c, r, tok);
	switch (r->beh % 13) {
	case 1: /* sleep on the token; without limit only with a deadline */
		pre = ctp_token_reason(tok);
		rc = ctp_token_sleep(tok, d);
		if (rc != 0 && (!is_reason(rc) || rc != ctp_token_reason(tok)))
			FAIL("ctp_token_sleep returned %d, reason %d", rc,
			    ctp_token_reason(tok));
		if (pre != 0 && rc != pre)
			FAIL("sleep on a fired token returned %d", rc);
		if (rc == 0 && (d == CTP_FOREVER || d == INT64_MAX))
			FAIL("sleep without limit returned 0");
		break;
	case 2:
		q_push(c, r->p2 % NQUEUES, (r->p2 & 2) ? tok : NULL,
		    (r->p2 & 2) ? d : dur(r->p1, false));
		break;
	case 3:
		q_pop(c, r->p2 % NQUEUES, (r->p2 & 2) ? tok : NULL,
		    (r->p2 & 2) ? d : dur(r->p1, false));
		break;
	case 4:
		if (r->depth < MAX_DEPTH) {
			uint8_t b[6] = { r->p2, (uint8_t)(r->beh / 13), r->p1,
			    r->p3, (uint8_t)(r->p2 >> 1), (uint8_t)(r->p1 >> 2) };

			submit(c, r, tok, b, ((r->p1 ^ r->p2) & 0x40) != 0);
		}
		break;
	case 5:
		k = pick(&c->ntasks, MAX_TASKS, r->p1);
		task_cancel_checked(c, k, k == self);
		break;
	case 6:
		k = pick(&c->ntasks, MAX_TASKS, r->p1);
		task_wait_checked(c, k, dur(r->p2, false), k == self);
		break;
	case 7:
		check_deadlk(c, (unsigned)r->pool, true);
		break;
	case 8: /* a child of the task's own token */
		if (r->p2 & 1) {
			token_new(c, -2, tok);
		} else {
			ctp_token *ch = NULL;
			/* Only a parent that had fired before the create
			 * must give a child born fired: one that fires
			 * meanwhile reaches the child by its cascade,
			 * which may still be under way when we look. */
			int before = ctp_token_reason(tok);

			rc = ctp_token_create(&ch, tok);
			EXPECT("ctp_token_create", rc, -ENOMEM);
			if (rc == 0) {
				if (before != 0 && ctp_token_reason(ch) != before)
					FAIL("child of a fired task token not "
					    "born fired with its reason");
				if (r->p2 & 2)
					EXPECT("ctp_token_cancel", ctp_token_cancel(ch),
					    -EALREADY);
				ctp_token_release(ch);
			}
		}
		break;
	case 9: /* cancel its own token, like ctp_task_cancel would */
		atomic_fetch_add(&c->fire_epoch, 1);
		atomic_fetch_add(&c->firing, 1);
		rc = ctp_token_cancel(tok);
		atomic_fetch_sub(&c->firing, 1);
		EXPECT("ctp_token_cancel (own)", rc, -EALREADY);
		if (!ctp_token_cancelled(tok))
			FAIL("own token not fired after ctp_token_cancel");
		if (rc == 0)
			atomic_store(&r->cancel_tried, true);
		break;
	case 10: /* the token's fd */
	{
		int fd = ctp_token_fd(tok);
		struct pollfd p;

		if (fd < 0) {
			EXPECT("ctp_token_fd", fd, -EMFILE, -ENFILE, -ENOMEM);
			break;
		}
		if (ctp_token_fd(tok) != fd)
			FAIL("ctp_token_fd changed");
		p.fd = fd;
		p.events = POLLIN;
		p.revents = 0;
		(void)poll(&p, 1, (r->p2 & 1) ? 1 : 0);
		break;
	}
	case 11: /* a task's own token is the pool's: release is a no-op */
		ctp_token_release(tok);
		rc = ctp_token_sleep(tok, 0);
		if (rc != 0 && rc != ctp_token_reason(tok))
			FAIL("sleep(0) returned %d", rc);
		break;
	case 12: /* cancel itself by handle: never 0 while running */
		task_cancel_checked(c, self, true);
		if (task_pin(c, self) != NULL) {
			task_unpin(c, self);
			task_wait_checked(c, self, 0, true);
		}
		break;
	default:
		break;
	}
	return rc;
}

static int task_fn(void *arg, ctp_token *token)
{
	cookie *ck = arg;
	trec *r;
	ctx *c;
	int rc, ret, n;
	int64_t t, bound = 0;
	unsigned self;

	if (ck->magic != COOKIE_MAGIC)
		FAIL("fn got a bad arg");
	r = ck->rec;
	c = r->ctx;
	self = (unsigned)(r - c->tasks);
	atomic_fetch_add(&c->active_cb, 1);
	n = atomic_fetch_add(&r->fn_started, 1);
	t = now_ns();
	if (r->period == 0 && n != 0)
		FAIL("fn ran twice");
	if (r->period > 0 && atomic_exchange(&r->in_run, 1) != 0)
		FAIL("runs of periodic task %u overlap (run %d)", self, n);
	if (atomic_load(&r->done_calls) != 0)
		FAIL("fn started after done");
	if (atomic_load(&r->must_not_run))
		FAIL("fn ran after cancel answered 0");
	if (token == NULL)
		FAIL("fn got a NULL token");
	/* never before its due time (the lock: not while a reschedule of
	 * it runs, which may move it) */
	pthread_mutex_lock(&r->lb_mu);
	if (r->lb_ok && n >= r->lb_run) {
		int64_t k = n - r->lb_run; /* runs since the bound's run */

		bound = r->lb;
		if (k > 0 && r->period > 0)
			bound = r->period > (INT64_MAX - bound) / k ? INT64_MAX :
			    bound + k * r->period;
	}
	pthread_mutex_unlock(&r->lb_mu);
	if (t < bound)
		FAIL("task %u (delay %lld, period %lld) run %d started %lld ns "
		    "before its due time", self, (long long)r->delay,
		    (long long)r->period, n, (long long)(bound - t));
	if (r->to_first && !atomic_load(&r->resched_tried))
		FAIL("task %u ran although its timeout %lld <= its delay %lld "
		    "(started %lld ns after the submit began, period %lld, "
		    "token reason %d)", self, (long long)r->deadline,
		    (long long)r->delay, (long long)(t - r->t0),
		    (long long)r->period, ctp_token_reason(token));
	if (r->period > 0)
		DBG(n == 0 ? DBG_RUN0 : DBG_RUNN);
	rc = task_act(c, r, self, token);
	if (r->self_resched && n == 0)
		(void)resched_checked(c, self, sdelay(r->p2, false), true,
		    token);
	if (r->self_end != 0 && n + 1 >= r->self_end) {
		/* the series ends after this run */
		int e;

		atomic_store(&r->cancel_tried, true);
		atomic_fetch_add(&c->fire_epoch, 1);
		atomic_fetch_add(&c->firing, 1);
		e = ctp_token_cancel(token);
		atomic_fetch_sub(&c->firing, 1);
		if (e == 0)
			DBG(DBG_SELFEND);
		EXPECT("ctp_token_cancel (periodic, own)", e, -EALREADY);
	}
	switch ((r->p3 >> 4) & 3) {
	case 0: ret = 0; break;
	case 1: ret = 7; break;
	case 2: ret = -EIO; break;
	default: ret = rc; break;
	}
	atomic_store(&r->ret, ret);
	atomic_store(&r->fn_returned, 1);
	if (r->period > 0)
		atomic_store(&r->in_run, 0);
	atomic_fetch_sub(&c->active_cb, 1);
	return ret;
}

static void task_done(void *arg, int status)
{
	cookie *ck = arg;
	trec *r;
	ctx *c;
	unsigned self;

	if (ck->magic != COOKIE_MAGIC)
		FAIL("done got a bad arg");
	r = ck->rec;
	c = r->ctx;
	self = (unsigned)(r - c->tasks);
	atomic_fetch_add(&c->active_cb, 1);
	cb_depth++;
	if (atomic_fetch_add(&r->done_calls, 1) != 0)
		FAIL("done called twice");
	atomic_store(&r->status, status);
	if (r->period > 0 && atomic_load(&r->in_run))
		FAIL("done of periodic task %u called during a run", self);
	if (atomic_load(&r->fn_started)) {
		if (!atomic_load(&r->fn_returned))
			FAIL("done called while fn runs");
		/* a series that ran: the last run's status if its token
		 * fired during it, else the token's reason */
		if (status != atomic_load(&r->ret) &&
		    !(r->period > 0 && is_reason(status)))
			FAIL("done of task %u (period %lld) got %d, fn returned "
			    "%d", self, (long long)r->period, status,
			    atomic_load(&r->ret));
	} else if (!is_reason(status)) {
		FAIL("done got %d for a task that never ran", status);
	}
	if (r->dflags_wait) {
		check_deadlk(c, (unsigned)r->pool, false);
		if (task_pin(c, self) != NULL) {
			task_unpin(c, self);
			task_wait_checked(c, self, 0, true);
		}
	}
	if (r->dcancel != 0xff)
		task_cancel_checked(c, pick(&c->ntasks, MAX_TASKS, r->dcancel),
		    false);
	/* a slow done: a firer or a shutdown is inside it a while longer */
	for (unsigned k = 0; k < r->dyield; k++)
		sched_yield();
	ck->magic = 0;
	free(ck); /* the library never touches arg after done */
	atomic_store(&r->done_returned, 1);
	cb_depth--;
	atomic_fetch_sub(&c->active_cb, 1);
}

/* ---- bad arguments -------------------------------------------------------- */

#define EINVAL_OR_FAIL(call) do { \
	int rc_ = (call); \
	if (rc_ != -EINVAL) \
		FAIL("%s returned %d, expected -EINVAL", #call, rc_); \
} while (0)

static int dummy_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	FAIL("a task refused for a bad argument ran");
}

static void dummy_watch(void *arg)
{
	(void)arg;
}

static void bad_args(ctx *c, uint8_t a, uint8_t b)
{
	ctp_pool *p = c->pools[b % c->npools];
	ctp_queue *q = c->q[b % NQUEUES];
	int64_t bad = (b & 1) ? -2 : INT64_MIN;
	unsigned ti = pick(&c->ntokens, MAX_TOKENS, b);
	unsigned hi = pick(&c->ntasks, MAX_TASKS, b);
	ctp_token *t = token_pin(c, ti);
	ctp_task *h = task_pin(c, hi);
	ctp_task_opts o = {0};
	ctp_pool_opts po = {0};
	ctp_pool *np = NULL;
	ctp_queue *nq = NULL;
	ctp_watch *nw = NULL;
	ctp_stats s;
	void *item;

	switch (a % 12) {
	case 0:
		EINVAL_OR_FAIL(ctp_pool_submit(NULL, dummy_fn, NULL, NULL, NULL));
		EINVAL_OR_FAIL(ctp_pool_submit(p, NULL, NULL, NULL, NULL));
		o.timeout = bad;
		EINVAL_OR_FAIL(ctp_pool_submit(p, dummy_fn, NULL, &o, NULL));
		o.timeout = 0;
		o.queue_wait = bad;
		EINVAL_OR_FAIL(ctp_pool_submit(p, dummy_fn, NULL, &o, NULL));
		break;
	case 1:
		EINVAL_OR_FAIL(ctp_task_cancel(NULL));
		EINVAL_OR_FAIL(ctp_task_wait(NULL, 0, NULL));
		EINVAL_OR_FAIL(ctp_task_state(NULL));
		if (h != NULL)
			EINVAL_OR_FAIL(ctp_task_wait(h, bad, NULL));
		ctp_task_release(NULL);
		break;
	case 2:
		EINVAL_OR_FAIL(ctp_token_create(NULL, NULL));
		EINVAL_OR_FAIL(ctp_token_create(NULL, t));
		EINVAL_OR_FAIL(ctp_token_cancel(NULL));
		EINVAL_OR_FAIL(ctp_token_reason(NULL));
		EINVAL_OR_FAIL(ctp_token_sleep(NULL, 0));
		EINVAL_OR_FAIL(ctp_token_fd(NULL));
		ctp_token_release(NULL);
		break;
	case 3:
		if (t != NULL) {
			EINVAL_OR_FAIL(ctp_token_sleep(t, bad));
			EINVAL_OR_FAIL(ctp_token_watch(t, NULL, NULL, &nw));
			EINVAL_OR_FAIL(ctp_token_watch(t, dummy_watch, NULL,
			    NULL));
		}
		EINVAL_OR_FAIL(ctp_token_watch(NULL, dummy_watch, NULL, &nw));
		ctp_token_unwatch(NULL);
		break;
	case 4:
		EINVAL_OR_FAIL(ctp_queue_create(NULL, 4));
		EINVAL_OR_FAIL(ctp_queue_create(&nq, 0));
		EINVAL_OR_FAIL(ctp_queue_create(&nq, CTP_MAX_CAPACITY + 1));
		EINVAL_OR_FAIL(ctp_queue_push(NULL, NULL, NULL, 0));
		EINVAL_OR_FAIL(ctp_queue_pop(NULL, &item, NULL, 0));
		EINVAL_OR_FAIL(ctp_queue_push(q, NULL, NULL, bad));
		EINVAL_OR_FAIL(ctp_queue_pop(q, &item, NULL, bad));
		ctp_queue_close(NULL);
		ctp_queue_destroy(NULL);
		if (ctp_queue_size(NULL) != 0)
			FAIL("ctp_queue_size(NULL) != 0");
		break;
	case 5:
		EINVAL_OR_FAIL(ctp_pool_shutdown(NULL, 0, 0));
		EINVAL_OR_FAIL(ctp_pool_shutdown(p, bad, 0));
		EINVAL_OR_FAIL(ctp_pool_shutdown(p, 0, bad));
		EINVAL_OR_FAIL(ctp_pool_wait_idle(NULL, 0));
		EINVAL_OR_FAIL(ctp_pool_wait_idle(p, bad));
		EINVAL_OR_FAIL(ctp_pool_destroy(NULL));
		ctp_pool_stats(NULL, &s);
		ctp_pool_stats(p, NULL);
		break;
	case 6:
		EINVAL_OR_FAIL(ctp_pool_create(NULL, NULL));
		po.threads = CTP_MAX_THREADS + 1 + b;
		EINVAL_OR_FAIL(ctp_pool_create(&np, &po));
		po.threads = 1;
		po.queue_capacity = CTP_MAX_CAPACITY + 1;
		EINVAL_OR_FAIL(ctp_pool_create(&np, &po));
		break;
	case 7:
	{
		static const int codes[] = { 0, -EINVAL, -ENOMEM, -EAGAIN,
		    -ESHUTDOWN, -ECANCELED, -ETIMEDOUT, -EDEADLK, -EINPROGRESS,
		    -EALREADY, -EMFILE, -ENFILE, -12345, 5 };

		for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
			if (ctp_strerror(codes[i]) == NULL)
				FAIL("ctp_strerror(%d) is NULL", codes[i]);
		break;
	}
	case 8: /* scheduling options: every invalid field, also with a handle */
		for (uint8_t v = 0; v < 16; v++) {
			ctp_task *nt = NULL;

			memset(&o, 0, sizeof(o));
			o.timeout = (v & 1) ? CTP_USEC(1) : 0;
			bad_sched(&o, v);
			EINVAL_OR_FAIL(ctp_pool_submit(p, dummy_fn, NULL, &o,
			    (v & 2) ? &nt : NULL));
		}
		break;
	case 9: /* ctp_task_reschedule: NULL, a negative delay */
		EINVAL_OR_FAIL(ctp_task_reschedule(NULL, 0));
		EINVAL_OR_FAIL(ctp_task_reschedule(NULL, -1));
		if (h != NULL) {
			EINVAL_OR_FAIL(ctp_task_reschedule(h, bad));
			EINVAL_OR_FAIL(ctp_task_reschedule(h, -1));
		}
		break;
	default:
		break;
	}
	if (t != NULL)
		token_unpin(c, ti);
	if (h != NULL)
		task_unpin(c, hi);
}

/* ---- pools ---------------------------------------------------------------- */

/* user points at hookarg[pi] */
typedef struct hookarg {
	ctx     *c;
	unsigned pi;
} hookarg;

static void hook_start(unsigned index, void *user)
{
	hookarg *h = user;

	if (index >= h->c->workers[h->pi])
		FAIL("on_thread_start index %u of %u", index,
		    h->c->workers[h->pi]);
	if (atomic_fetch_or(&h->c->start_mask[h->pi], 1u << index) &
	    (1u << index))
		FAIL("on_thread_start twice for index %u", index);
	atomic_fetch_add(&h->c->starts[h->pi], 1);
}

static void hook_stop(unsigned index, void *user)
{
	hookarg *h = user;

	if (!(atomic_load(&h->c->start_mask[h->pi]) & (1u << index)))
		FAIL("on_thread_stop without start, index %u", index);
	if (atomic_fetch_or(&h->c->stop_mask[h->pi], 1u << index) &
	    (1u << index))
		FAIL("on_thread_stop twice for index %u", index);
	atomic_fetch_add(&h->c->stops[h->pi], 1);
}

static int do_shutdown(ctx *c, unsigned pi, int64_t drain, int64_t grace)
{
	int rc;

	atomic_store(&c->shut_started[pi], true);
	rc = ctp_pool_shutdown(c->pools[pi], drain, grace);

	EXPECT("ctp_pool_shutdown", rc, -ETIMEDOUT);
	if (rc == -ETIMEDOUT && grace == CTP_FOREVER)
		FAIL("shutdown with grace FOREVER timed out");
	atomic_store(&c->shut_returned[pi], true);
	return rc;
}

/* After a shutdown of pool pi returned 0: nothing is queued, running or
 * alive and every on_thread_stop ran. Keeps the stats for check_pool_stats
 * (the pool may be destroyed before the harness's checks run). */
static void after_shutdown(ctx *c, unsigned pi)
{
	ctp_stats *s = &c->fstats[pi];

	ctp_pool_stats(c->pools[pi], s);
	c->stats_ok[pi] = true;
	if (s->queued != 0 || s->running != 0 || s->threads != 0)
		FAIL("after shutdown: queued %llu running %llu threads %u",
		    (unsigned long long)s->queued,
		    (unsigned long long)s->running, s->threads);
	if (atomic_load(&c->stops[pi]) != c->workers[pi])
		FAIL("on_thread_stop ran %u times for %u workers",
		    atomic_load(&c->stops[pi]), c->workers[pi]);
}

static void check_stats_running(ctx *c, unsigned pi)
{
	ctp_stats s;

	memset(&s, 0xa5, sizeof(s));
	ctp_pool_stats(c->pools[pi], &s);
	if (s.threads > c->workers[pi])
		FAIL("stats.threads %u > %u", s.threads, c->workers[pi]);
	if (s.running > c->workers[pi])
		FAIL("stats.running %llu > workers",
		    (unsigned long long)s.running);
	if (s.submitted > MAX_TASKS)
		FAIL("stats.submitted %llu", (unsigned long long)s.submitted);
}

/* ---- firers: the tree race and the endgame -------------------------------- */

static uint32_t rnd(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* A thread that cancels up to two token slots in order, off a barrier. */
typedef struct firer {
	ctx               *c;
	pthread_barrier_t *bar;
	int                tok[2];  /* slots, -1 none */
	unsigned           spin;    /* pauses after the barrier */
} firer;

static void *firer_main(void *arg)
{
	firer *f = arg;

	pthread_barrier_wait(f->bar);
	tu_delay_loop(f->spin);
	for (unsigned i = 0; i < 2; i++)
		if (f->tok[i] >= 0)
			(void)token_cancel_checked(f->c, (unsigned)f->tok[i]);
	return NULL;
}

/* Grows a tree root <- sub (<- leaf if deep) in new slots, under[] = their
 * slots (-1: none), and submits to pool pi, with done and no deadline:
 * first (blockers) one task per worker under the root that sleeps on its
 * token (1 ms at most) so that the rest stay queued, then n tasks spread
 * over the levels (relays if relay, slow dones if dyield). The bits pick
 * levels, behaviours and kept handles. Returns false without a root. */
static bool grow_tree(ctx *c, unsigned pi, bool deep, bool blockers,
                      unsigned n, uint8_t bits, bool relay, uint8_t dyield,
                      int under[3])
{
	under[0] = token_new(c, -1, NULL);
	under[1] = under[0] >= 0 ? token_new(c, under[0], NULL) : -1;
	under[2] = deep && under[1] >= 0 ? token_new(c, under[1], NULL) : -1;
	if (under[0] < 0)
		return false;
	for (unsigned k = 0; blockers && k < c->workers[pi]; k++) {
		uint8_t b[6] = { 0, 1, 5, 0, (uint8_t)k, 0 };
		forced f = { .pool = pi, .parent = under[0] };

		(void)submit_ex(c, NULL, NULL, b, &f, false);
	}
	for (unsigned k = 0; k < n; k++) {
		unsigned lvl = (bits + k) % 3;
		uint8_t b[6] = { 0, (uint8_t)((bits >> (k & 7)) & 1),
		    (uint8_t)(bits + k), (uint8_t)(bits << 4),
		    (uint8_t)((bits >> 1) ^ k), (uint8_t)k };
		forced f = { .pool = pi, .relay = relay, .dyield = dyield };

		f.parent = under[lvl] >= 0 ? under[lvl] : under[lvl - 1];
		(void)submit_ex(c, NULL, NULL, b, &f, false);
	}
	return true;
}

/* Two firers in one tree (op 14 with (b & 7) == 1): a helper thread
 * cancels the sub-token (or the leaf) while this thread cancels the root,
 * both off a barrier, over tasks queued with slow dones at every level.
 * token_cancel_checked checks that the root's cancel, when it answers 0,
 * returns only after every queued task of the tree had its done, also those
 * under the sub-token the helper fired first and is still finishing. */
static void tree_race(ctx *c, uint8_t a, uint8_t d, uint8_t e)
{
	unsigned pi = a % c->npools;
	pthread_barrier_t bar;
	int under[3];
	firer h;
	pthread_t th;

	if (!grow_tree(c, pi, d & 1, e & 0x80, 1 + ((d >> 1) & 7), e, false,
	    (uint8_t)((e >> 5) & 3), under))
		return;
	if (pthread_barrier_init(&bar, NULL, 2) != 0)
		abort();
	h.c = c;
	h.bar = &bar;
	h.tok[0] = (e & 1) && under[2] >= 0 ? under[2] : under[1];
	h.tok[1] = -1;
	h.spin = (unsigned)(d >> 4) * 32;
	if (pthread_create(&th, NULL, firer_main, &h) != 0)
		abort();
	pthread_barrier_wait(&bar);
	tu_delay_loop((unsigned)((e >> 1) & 15) * 32);
	(void)token_cancel_checked(c, (unsigned)under[0]);
	pthread_join(th, NULL);
	pthread_barrier_destroy(&bar);
}

/* ---- the endgame ---------------------------------------------------------- */

/* Waits until every task accepted so far has finished: wait_idle on every
 * pool, until two rounds in a row saw no new submit (tasks submit only from
 * fn, to either pool, at most MAX_DEPTH deep). */
static void quiesce(ctx *c)
{
	for (unsigned quiet = 0; quiet < 2;) {
		unsigned n0 = atomic_load(&c->ntasks);

		for (unsigned p = 0; p < c->npools; p++) {
			int rc = ctp_pool_wait_idle(c->pools[p], CTP_FOREVER);

			if (rc != 0)
				FAIL("wait_idle without limit returned %d", rc);
		}
		quiet = atomic_load(&c->ntasks) == n0 ? quiet + 1 : 0;
	}
}

/* The endgame (header mode m = data[0] >> 5, not 0), on pool 0, once every
 * earlier task has finished. A tree root <- sub (<- leaf) with tasks queued
 * with done at every level; a firer thread cancels the leaf or the sub and
 * then the root, a second one (m & 2) the root at the same time, while this
 * thread tears the pool down: ctp_pool_shutdown (drain and grace from the
 * header) then ctp_pool_destroy at once, or (m & 1) ctp_pool_wait_idle then
 * ctp_pool_destroy at once. With m & 4 the tasks are relays (they submit
 * follow-ups to their pool, ignoring their token) and the shutdown is
 * (0, 0): the pool abandons them and is destroyed while they go on.
 * The firers hold no pool handle and their dones do not call the pool:
 * whatever they touch of it after destroy is the library's. Then it waits
 * (bounded) until the pool's threads are done with the harness's data. */
static void endgame(ctx *c, const uint8_t *hdr)
{
	unsigned m = c->mode, nf = (m & 2) ? 2 : 1;
	uint32_t x = c->seed | 1;
	bool relays = (m & 4) != 0;
	pthread_barrier_t bar;
	firer f[2];
	pthread_t th[2];
	int under[3], rc;
	int64_t limit;

	quiesce(c);
	atomic_store(&c->endgame, true);
	if (!grow_tree(c, 0, rnd(&x) & 1, !relays && (rnd(&x) & 1),
	    2 + rnd(&x) % 10, (uint8_t)rnd(&x), relays, (uint8_t)(rnd(&x) % 4),
	    under))
		under[0] = under[1] = under[2] = -1;
	if (pthread_barrier_init(&bar, NULL, nf + 1) != 0)
		abort();
	for (unsigned k = 0; k < nf; k++) {
		f[k].c = c;
		f[k].bar = &bar;
		f[k].spin = rnd(&x) % 512;
		f[k].tok[0] = k == 1 ? under[0] :
		    under[2] >= 0 && (rnd(&x) & 1) ? under[2] : under[1];
		f[k].tok[1] = k == 1 ? -1 : under[0];
		if (pthread_create(&th[k], NULL, firer_main, &f[k]) != 0)
			abort();
	}
	/* destroy shuts the pool down: no tree check while it may drop */
	if (m & 1)
		atomic_store(&c->shut_started[0], true);
	pthread_barrier_wait(&bar);
	tu_delay_loop(rnd(&x) % 512);
	if (m & 1) {
		rc = ctp_pool_wait_idle(c->pools[0], CTP_FOREVER);
		if (rc != 0)
			FAIL("wait_idle without limit returned %d", rc);
		/* idle: the identity holds and every done has returned */
		ctp_pool_stats(c->pools[0], &c->fstats[0]);
		c->stats_ok[0] = true;
	} else {
		rc = do_shutdown(c, 0, relays ? 0 : dur(hdr[3], false),
		    relays ? 0 : dur(hdr[3] >> 3, true));
		if (rc == 0)
			after_shutdown(c, 0);
	}
	if (ctp_pool_destroy(c->pools[0]) != 0)
		FAIL("ctp_pool_destroy failed");
	atomic_store(&c->shut_returned[0], true);
	for (unsigned k = 0; k < nf; k++)
		pthread_join(th[k], NULL);
	pthread_barrier_destroy(&bar);
	/* Abandoned workers finish their tasks, then run on_thread_stop: the
	 * harness's data stays until then and until no callback runs. */
	limit = now_ns() + CTP_SEC(5);
	while (atomic_load(&c->stops[0]) != c->workers[0] ||
	    atomic_load(&c->active_cb) != 0) {
		struct timespec ms = { 0, 1000000 };

		if (now_ns() > limit)
			FAIL("pool 0 destroyed: %u of %u workers stopped, %d "
			    "callbacks still running after 5 s",
			    atomic_load(&c->stops[0]), c->workers[0],
			    atomic_load(&c->active_cb));
		nanosleep(&ms, NULL);
	}
}

/* ---- the reaper ----------------------------------------------------------- */

/* Cancels each task's lease (a parent token only the harness holds) once
 * its reap time has come, so that every task with a huge delay or a
 * periodic one without an end of its own ends within a few ms: the
 * callers' waits without limit (ctp_task_wait, wait_idle, a drain, a
 * submit waiting for room) and the endgame's quiesce rely on it. Runs
 * from before the callers start until every pool has shut down. */
static void *reaper_main(void *arg)
{
	ctx *c = arg;

	while (!atomic_load(&c->reaper_stop)) {
		unsigned n = atomic_load(&c->ntasks);
		int64_t now = now_ns(), next = now + CTP_MSEC(5);
		struct timespec ts;

		if (n > MAX_TASKS)
			n = MAX_TASKS;
		for (unsigned i = 0; i < n; i++) {
			trec *r = &c->tasks[i];
			int rc;

			if (!atomic_load(&r->lease_set) ||
			    atomic_load(&r->reaped))
				continue;
			if (now < r->reap_at) {
				if (r->reap_at < next)
					next = r->reap_at;
				continue;
			}
			atomic_store(&r->reaped, true);
			atomic_fetch_add(&c->fire_epoch, 1);
			atomic_fetch_add(&c->firing, 1);
			rc = ctp_token_cancel(r->lease);
			atomic_fetch_sub(&c->firing, 1);
			if (rc == 0)
				DBG(DBG_REAP);
			EXPECT("ctp_token_cancel (lease)", rc, -EALREADY);
		}
		/* sleep until the next reap time, a new lease or the stop
		 * (no cancel under rp_mu: a done may publish a lease) */
		ts.tv_sec = next / 1000000000;
		ts.tv_nsec = next % 1000000000;
		pthread_mutex_lock(&c->rp_mu);
		if (!c->rp_kick && !atomic_load(&c->reaper_stop))
			(void)pthread_cond_timedwait(&c->rp_cv, &c->rp_mu, &ts);
		c->rp_kick = false;
		pthread_mutex_unlock(&c->rp_mu);
	}
	return NULL;
}

static void reaper_kick(ctx *c, bool stop)
{
	pthread_mutex_lock(&c->rp_mu);
	if (stop)
		atomic_store(&c->reaper_stop, true);
	c->rp_kick = true;
	pthread_cond_signal(&c->rp_cv);
	pthread_mutex_unlock(&c->rp_mu);
}

/* ---- caller threads ------------------------------------------------------- */

static void run_op(ctx *c, const uint8_t *r)
{
	uint8_t a = r[1], b = r[2], d = r[4], e = r[5];
	unsigned pi = a % c->npools;
	int rc;

	switch (r[0] % 22) {
	case 0:
		token_new(c, (b & 1) ? (int)pick(&c->ntokens, MAX_TOKENS, a) : -1,
		    NULL);
		break;
	case 1:
		token_cancel_checked(c, pick(&c->ntokens, MAX_TOKENS, a));
		break;
	case 2:
		token_close(c, pick(&c->ntokens, MAX_TOKENS, a));
		break;
	case 3:
		watch_new(c, pick(&c->ntokens, MAX_TOKENS, a), b);
		break;
	case 4:
		watch_drop(c, pick(&c->nwatches, MAX_WATCHES, a));
		break;
	case 5: case 6: case 7:
		submit(c, NULL, NULL, r + 1, false);
		break;
	case 8:
		task_cancel_checked(c, pick(&c->ntasks, MAX_TASKS, a), false);
		break;
	case 9:
		task_wait_checked(c, pick(&c->ntasks, MAX_TASKS, a),
		    dur(b, true), false);
		break;
	case 10:
	{
		unsigned i = pick(&c->ntasks, MAX_TASKS, a);
		ctp_task *h = task_pin(c, i);

		if (h != NULL) {
			check_state(ctp_task_state(h));
			task_unpin(c, i);
		}
		break;
	}
	case 11:
		task_close(c, pick(&c->ntasks, MAX_TASKS, a));
		break;
	case 12:
	case 13:
	{
		unsigned ti = pick(&c->ntokens, MAX_TOKENS, b);
		ctp_token *t = (d & 1) ? token_pin(c, ti) : NULL;
		int64_t to = dur(e, false);

		if (r[0] % 22 == 12)
			q_push(c, a % NQUEUES, t, to);
		else
			q_pop(c, a % NQUEUES, t, to);
		if (t != NULL)
			token_unpin(c, ti);
		break;
	}
	case 14:
		if ((b & 7) == 0) {
			ctp_queue_close(c->q[a % NQUEUES]);
			atomic_store(&c->q_closed[a % NQUEUES], true);
		} else if ((b & 7) == 1) {
			tree_race(c, a, d, e);
		}
		break;
	case 15:
		if ((b & 3) == 0)
			do_shutdown(c, pi, dur(d, true), dur(e, true));
		break;
	case 16:
		rc = ctp_pool_wait_idle(c->pools[pi], dur(b, true));
		EXPECT("ctp_pool_wait_idle", rc, -ETIMEDOUT);
		if (rc == -ETIMEDOUT && (dur(b, true) == CTP_FOREVER ||
		    dur(b, true) == INT64_MAX))
			FAIL("wait_idle without limit timed out");
		break;
	case 17:
		check_stats_running(c, pi);
		break;
	case 18:
	{
		unsigned ti = pick(&c->ntokens, MAX_TOKENS, a);
		ctp_token *t = token_pin(c, ti);

		if (t == NULL)
			break;
		rc = ctp_token_sleep(t, dur(b, false));
		if (rc != 0 && rc != ctp_token_reason(t))
			FAIL("ctp_token_sleep returned %d, reason %d", rc,
			    ctp_token_reason(t));
		if (d & 1) {
			rc = ctp_token_fd(t);
			if (rc < 0)
				EXPECT("ctp_token_fd", rc, -EMFILE, -ENFILE,
				    -ENOMEM);
		}
		token_unpin(c, ti);
		break;
	}
	case 19:
		bad_args(c, b, d);
		break;
	case 20: /* a scheduled submit (submit_ex) */
		submit(c, NULL, NULL, r + 1, true);
		break;
	case 21: /* reschedule a held handle: b & 7 the delay, 7 negative */
	{
		int64_t dl = (b & 7) == 7 ? ((d & 1) ? -1 : INT64_MIN) :
		    sdelay((uint8_t)((b & 7) == 6 ? 7 : b), true);

		(void)resched_checked(c, pick(&c->ntasks, MAX_TASKS, a), dl,
		    false, NULL);
		break;
	}
	}
}

static void *caller(void *arg)
{
	void **a = arg;
	ctx *c = a[0];
	unsigned k = (unsigned)(uintptr_t)a[1];

	pthread_barrier_wait(&c->barrier);
	for (size_t i = 0; i < c->nops[k]; i++)
		run_op(c, c->ops[k] + i * REC * c->nthreads);
	return NULL;
}

/* ---- the end of an input -------------------------------------------------- */

static void final_shutdown(ctx *c, unsigned pi, int64_t drain, int64_t grace)
{
	int rc = ctp_pool_shutdown(c->pools[pi], drain, grace);

	EXPECT("ctp_pool_shutdown (final)", rc, -ETIMEDOUT);
	if (rc != 0) {
		rc = ctp_pool_shutdown(c->pools[pi], 0, CTP_SEC(5));
		if (rc != 0)
			FAIL("shutdown after -ETIMEDOUT returned %d", rc);
	}
}

static void check_pool_stats(ctx *c, unsigned pi)
{
	uint64_t acc = 0, ran = 0, why[3] = {0}, unknown = 0;
	unsigned n = atomic_load(&c->ntasks);
	ctp_stats s = c->fstats[pi];

	if (n > MAX_TASKS)
		n = MAX_TASKS;
	for (unsigned i = 0; i < n; i++) {
		trec *r = &c->tasks[i];
		int st;

		if (r->pool != (int)pi || atomic_load(&r->accepted) != 1)
			continue;
		acc++;
		if (atomic_load(&r->fn_returned)) {
			ran++;
			continue;
		}
		st = r->has_done ? atomic_load(&r->status) :
		    atomic_load(&r->wait_status);
		if (st == -ECANCELED)
			why[0]++;
		else if (st == -ETIMEDOUT)
			why[1]++;
		else if (st == -ESHUTDOWN)
			why[2]++;
		else
			unknown++;
	}
	if (s.submitted != s.completed + s.cancelled + s.timed_out + s.dropped)
		FAIL("stats identity: submitted %llu != %llu + %llu + %llu + %llu",
		    (unsigned long long)s.submitted,
		    (unsigned long long)s.completed,
		    (unsigned long long)s.cancelled,
		    (unsigned long long)s.timed_out,
		    (unsigned long long)s.dropped);
	if (s.submitted != acc || s.completed != ran)
		FAIL("stats: submitted %llu completed %llu, harness saw %llu %llu",
		    (unsigned long long)s.submitted,
		    (unsigned long long)s.completed,
		    (unsigned long long)acc, (unsigned long long)ran);
	if (s.cancelled < why[0] || s.timed_out < why[1] || s.dropped < why[2] ||
	    s.cancelled + s.timed_out + s.dropped != why[0] + why[1] + why[2] +
	    unknown)
		FAIL("stats: cancelled %llu timed_out %llu dropped %llu, "
		    "done saw %llu %llu %llu (+%llu unknown)",
		    (unsigned long long)s.cancelled,
		    (unsigned long long)s.timed_out,
		    (unsigned long long)s.dropped,
		    (unsigned long long)why[0], (unsigned long long)why[1],
		    (unsigned long long)why[2], (unsigned long long)unknown);
	if (s.rejected != atomic_load(&c->rejected[pi]))
		FAIL("stats.rejected %llu, harness saw %u -EAGAIN",
		    (unsigned long long)s.rejected, atomic_load(&c->rejected[pi]));
}

static void check_task(ctx *c, unsigned i)
{
	trec *r = &c->tasks[i];
	int acc = atomic_load(&r->accepted);
	int ran = atomic_load(&r->fn_started);
	int dc = atomic_load(&r->done_calls);
	int st = atomic_load(&r->status), ws;
	ctp_task *h;

	if (acc != 1) {
		if (ran || dc)
			FAIL("task %u refused (%d) but fn ran %d, done %d", i,
			    acc, ran, dc);
		return;
	}
	if (ran && !atomic_load(&r->fn_returned))
		FAIL("task %u: fn started but never returned", i);
	if (atomic_load(&r->in_run))
		FAIL("task %u: a periodic run never ended", i);
	if (r->has_done && dc != 1)
		FAIL("task %u: done called %d times", i, dc);
	if (r->has_done && !atomic_load(&r->done_returned))
		FAIL("task %u: done has not returned", i);
	if (atomic_load(&r->must_run) && !ran)
		FAIL("task %u: cancel said -EINPROGRESS but fn never ran", i);
	if (atomic_load(&r->must_not_run) &&
	    ran != atomic_load(&r->runs_at_cancel0))
		FAIL("task %u: cancel said 0 after %d runs, fn ran %d times", i,
		    atomic_load(&r->runs_at_cancel0), ran);
	if (atomic_load(&r->suspect) && !ran)
		FAIL("task %u: queued under a cancelled token, never ran, but "
		    "its done had not returned when ctp_token_cancel did", i);
	h = task_pin(c, i);
	if (h != NULL) {
		int s = INT32_MIN, rc = ctp_task_wait(h, 0, &s);

		if (rc != 0)
			FAIL("task %u: wait after shutdown returned %d", i, rc);
		record_wait_status(r, s);
		check_state(ctp_task_state(h));
		task_unpin(c, i);
	}
	ws = atomic_load(&r->wait_status);
	if (r->has_done && ws != INT32_MIN && ws != st)
		FAIL("task %u: wait status %d, done status %d", i, ws, st);
	if (!r->has_done)
		st = ws;
	if (st == INT32_MIN)
		return; /* no done, no handle: nothing says what it got */
	if (ran && (r->period == 0 || st == atomic_load(&r->ret)))  {
		if (st != atomic_load(&r->ret))
			FAIL("task %u: status %d, fn returned %d", i, st,
			    atomic_load(&r->ret));
		return;
	}
	/* never ran, or a series that ended between runs: a reason that
	 * could have fired its token */
	if (st == -ECANCELED && !r->may_cancel && !atomic_load(&r->cancel_tried))
		FAIL("task %u (%d runs): -ECANCELED but nothing cancelled it",
		    i, ran);
	if (st == -ETIMEDOUT && !r->may_timeout)
		FAIL("task %u (%d runs): -ETIMEDOUT without a deadline", i, ran);
	if (!is_reason(st))
		FAIL("task %u (%d runs, period %lld) status %d", i, ran,
		    (long long)r->period, st);
}

static void finish(ctx *c, const uint8_t *hdr)
{
	unsigned nt, nk, nw, first = 0;

	if (c->mode != 0) {
		endgame(c, hdr); /* pool 0 is gone after it */
		first = 1;
	}
	for (unsigned p = first; p < c->npools; p++)
		final_shutdown(c, p, dur(hdr[3], false), dur(hdr[3] >> 3, true));
	/* the statistics once no task runs anywhere: a task of the other
	 * pool may still be inside a submit to this one that waited for room
	 * and is being refused, which `submitted` counts until it backs out */
	for (unsigned p = first; p < c->npools; p++)
		after_shutdown(c, p);
	/* every task has ended: the leases are the harness's to drop */
	reaper_kick(c, true);
	pthread_join(c->reaper, NULL);
	nt = atomic_load(&c->ntasks);
	nt = nt > MAX_TASKS ? MAX_TASKS : nt;
	for (unsigned i = 0; i < nt; i++)
		check_task(c, i);
	for (unsigned p = 0; p < c->npools; p++)
		if (c->stats_ok[p]) /* not after an abandoning shutdown */
			check_pool_stats(c, p);
	nw = atomic_load(&c->nwatches);
	nw = nw > MAX_WATCHES ? MAX_WATCHES : nw;
	for (unsigned i = 0; i < nw; i++)
		watch_drop(c, i);
	for (unsigned i = 0; i < nw; i++) {
		int at = atomic_load(&c->watches[i].runs_at_unwatch);

		if (atomic_load(&c->watches[i].runs) > 1 ||
		    (at >= 0 && atomic_load(&c->watches[i].runs) != at))
			FAIL("watch %u ran after unwatch", i);
	}
	for (unsigned i = 0; i < nt; i++) {
		task_close(c, i);
		free(c->tasks[i].cookie);
		if (c->tasks[i].lease != NULL)
			ctp_token_release(c->tasks[i].lease);
	}
	nk = atomic_load(&c->ntokens);
	nk = nk > MAX_TOKENS ? MAX_TOKENS : nk;
	for (unsigned i = 0; i < nk; i++) {
		if (atomic_load(&c->tokens[i].zeros) > 1)
			FAIL("token %u: cancel answered 0 more than once", i);
		token_close(c, i);
	}
	for (unsigned p = first; p < c->npools; p++)
		if (ctp_pool_destroy(c->pools[p]) != 0)
			FAIL("ctp_pool_destroy failed");
	for (unsigned qi = 0; qi < NQUEUES; qi++) {
		size_t sz = ctp_queue_size(c->q[qi]), got = 0;
		void *item;
		int rc;

		while ((rc = ctp_queue_pop(c->q[qi], &item, NULL, 0)) == 0) {
			q_take(c, qi, item);
			got++;
		}
		if (rc != -EAGAIN && rc != -ESHUTDOWN)
			FAIL("draining pop returned %d", rc);
		if (got != sz)
			FAIL("queue size %zu, drained %zu", sz, got);
		ctp_queue_destroy(c->q[qi]);
	}
	for (unsigned id = 0; id < MAX_ITEMS && id < atomic_load(&c->nitems);
	    id++) {
		unsigned char pu = atomic_load(&c->item_pushed[id]);
		unsigned char po = atomic_load(&c->item_popped[id]);

		if (pu == 2 && po != 1)
			FAIL("item %u pushed but popped %u times", id, po);
		if (pu != 2 && po != 0)
			FAIL("item %u not pushed but popped", id);
	}
	if (c->mode != 0) {
		/* an abandoned worker exits on its own, soon: none may stay */
		char left[256];
		int now = -1;

		if (tu_threads_back_to(&c->base, CTP_SEC(5), &now, left,
		    sizeof(left)) != 0)
			FAIL("threads of this input alive 5 s after every pool "
			    "was destroyed: %s", left);
	}
}

/* ---- entry ---------------------------------------------------------------- */

#if defined(CTP_FUZZ_TSAN)
/* clang 14 runs SanitizerCoverage before ThreadSanitizer, so TSan sees every
 * bump of libFuzzer's inline 8-bit coverage counters, which all threads do
 * without synchronisation by design, as a race. Declare the counters' section
 * (bounds from the linker) a benign race; nothing else is excluded. */
extern char __start___sancov_cntrs[] __attribute__((weak));
extern char __stop___sancov_cntrs[] __attribute__((weak));
void AnnotateBenignRaceSized(const char *file, int line,
                             const volatile void *mem, unsigned long size,
                             const char *desc);
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
#if defined(CTP_FUZZ_TSAN)
	if (__start___sancov_cntrs != NULL &&
	    __stop___sancov_cntrs > __start___sancov_cntrs)
		AnnotateBenignRaceSized(__FILE__, __LINE__, __start___sancov_cntrs,
		    (unsigned long)(__stop___sancov_cntrs -
		    __start___sancov_cntrs), "libFuzzer coverage counters");
#endif
	return 0;
}

static const char *const names[] = {
	NULL, "f", "fuzzpool", "a-very-long-thread-name-prefix", "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ctx *c;
	pthread_t th[MAX_THREADS];
	void *targ[MAX_THREADS][2];
	hookarg ha[2];
	size_t nrec;
	int rc;

	if (size < HDR)
		return 0;
	cur_data = data;
	cur_size = size;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		abort();
	c->nthreads = 2 + (data[0] & 1);
	c->mode = data[0] >> 5;
	c->seed = 2166136261u;
	for (size_t i = 0; i < size; i++)
		c->seed = (c->seed ^ data[i]) * 16777619u;
	if (c->mode != 0 && tu_threads_scan(&c->base, NULL) < 0)
		FAIL("cannot read /proc/self/task");
	c->npools = 1 + ((data[1] >> 7) & 1);
	c->workers[0] = 1 + ((data[0] >> 1) & 3);
	c->workers[1] = 1 + ((data[1] >> 5) & 1);
	for (unsigned i = 0; i < MAX_TASKS; i++) {
		slot_init(&c->tasks[i].h);
		atomic_init(&c->tasks[i].wait_status, INT32_MIN);
		atomic_init(&c->tasks[i].status, INT32_MIN);
		atomic_init(&c->tasks[i].accept_seq, ULONG_MAX);
		atomic_init(&c->tasks[i].runs_at_cancel0, -1);
		c->tasks[i].ptoken = -1;
		if (pthread_mutex_init(&c->tasks[i].lb_mu, NULL) != 0)
			abort();
	}
	for (unsigned i = 0; i < MAX_TOKENS; i++)
		slot_init(&c->tokens[i].s);
	for (unsigned i = 0; i < MAX_WATCHES; i++) {
		c->watches[i].ctx = c;
		atomic_init(&c->watches[i].runs_at_unwatch, -1);
	}
	for (unsigned p = 0; p < c->npools; p++) {
		ctp_pool_opts o = {0};
		ctp_stats s;

		ha[p].c = c;
		ha[p].pi = p;
		o.threads = c->workers[p];
		o.queue_capacity = p == 0 ? 1u << ((data[0] >> 3) & 3) :
		    (data[1] & 16) ? 2 : 0;
		o.name = names[(data[2] >> p) % 5];
		o.on_thread_start = hook_start;
		o.on_thread_stop = hook_stop;
		o.user = &ha[p];
		rc = ctp_pool_create(&c->pools[p], &o);
		if (rc != 0)
			FAIL("ctp_pool_create returned %d", rc);
		if (atomic_load(&c->starts[p]) != c->workers[p])
			FAIL("create returned before every on_thread_start");
		ctp_pool_stats(c->pools[p], &s);
		if (s.threads != c->workers[p])
			FAIL("stats.threads %u at once, %u workers", s.threads,
			    c->workers[p]);
	}
	for (unsigned qi = 0; qi < NQUEUES; qi++) {
		rc = ctp_queue_create(&c->q[qi], 1 + ((data[1] >> (qi * 2)) & 3) *
		    (qi + 1));
		if (rc != 0)
			FAIL("ctp_queue_create returned %d", rc);
	}
	nrec = (size - HDR) / REC;
	for (unsigned k = 0; k < c->nthreads; k++) {
		c->ops[k] = data + HDR + k * REC;
		c->nops[k] = nrec / c->nthreads + (k < nrec % c->nthreads);
		if (c->nops[k] > MAX_OPS)
			c->nops[k] = MAX_OPS;
	}
	if (pthread_barrier_init(&c->barrier, NULL, c->nthreads) != 0)
		abort();
	{
		pthread_condattr_t ca;

		if (pthread_condattr_init(&ca) != 0 ||
		    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
		    pthread_cond_init(&c->rp_cv, &ca) != 0 ||
		    pthread_mutex_init(&c->rp_mu, NULL) != 0)
			abort();
		pthread_condattr_destroy(&ca);
	}
	if (pthread_create(&c->reaper, NULL, reaper_main, c) != 0)
		abort();
	for (unsigned k = 0; k < c->nthreads; k++) {
		targ[k][0] = c;
		targ[k][1] = (void *)(uintptr_t)k;
		if (pthread_create(&th[k], NULL, caller, targ[k]) != 0)
			abort();
	}
	for (unsigned k = 0; k < c->nthreads; k++)
		pthread_join(th[k], NULL);
	pthread_barrier_destroy(&c->barrier);
	finish(c, data);
	for (unsigned i = 0; i < MAX_TASKS; i++)
		pthread_mutex_destroy(&c->tasks[i].lb_mu);
	pthread_cond_destroy(&c->rp_cv);
	pthread_mutex_destroy(&c->rp_mu);
#if defined(CTP_FUZZ_DEBUG)
	fprintf(stderr, "dbg: periodic first runs %lu, later runs %lu; "
	    "reschedule 0 %lu, -EINPROGRESS %lu, -EALREADY %lu, -ENOMEM %lu, "
	    "-EINVAL %lu; reaped %lu; bad submits %lu; self-ended %lu\n",
	    dbg[0], dbg[1], dbg[2], dbg[3], dbg[4], dbg[5], dbg[6], dbg[7],
	    dbg[8], dbg[9]);
#endif
	free(c);
	return 0;
}
