/*
 * test_regress.c: regression tests for issue 9 (items 1, 2, 4, 5, 10, 11,
 * 12 and 15 of notes/issue9-decisions.md), named test_regress_<item>_<what>.
 * Each failed on the code before the fix, except the guards of the fix's
 * own exceptions and edges, which passed there and must keep passing:
 * 1_destroy_after_wait_idle_while_firer_in_call (deterministic only when
 * wait_idle returns before the firer's watchers), 2_cancel_root_from_sub_
 * done_no_self_deadlock, 5_watchers_run_in_registration_order, 5_unwatch_
 * other_from_watcher_no_self_deadlock and 10_abandoned_worker_submits_after_
 * destroy (the crash needs a preemption inside submit: the loop variant
 * hits it).
 *
 *   1  a group cancel's firer running a done of a task it caught queued
 *      keeps the pool alive: shutdown waits for that done, and a destroy
 *      right after wait_idle is safe while the firer is still in the call;
 *   2  a cancel of the root waits for another thread's fire of a sub-token
 *      (every queued task of the tree has had its done when it returns),
 *      but not for its own outer fire (no self-deadlock);
 *   4  a second concurrent shutdown does not return 0 while the first one
 *      is still running done(-ESHUTDOWN) of dropped tasks;
 *   5  a watch registered before the fire always runs (an unwatch after the
 *      fire waits for it), dones of caught tasks run before user watchers;
 *   10 an abandoned worker may keep calling its destroyed pool;
 *   11 a slow group watcher does not delay the wake-up of the group's
 *      running tasks, and may wait for one of them;
 *   12 deadlines do not wait behind the done of a timed-out queued task
 *      (that done runs on "<name>-tcb");
 *   15 shutdown(pool, 0, 0) of an idle pool returns 0.
 *
 * Determinism: events are ordered with semaphores; timing is asserted only
 * as "woken within BOUND" or as "has not returned yet" (a 200 ms wait that
 * must run out: the fixed code never returns there, so it cannot flake).
 * Every wait is bounded. Only the test's own thread calls assert_*; other
 * threads record into atomics. Run one test with: test_regress <name or
 * glob> (cmocka's test filter).
 */
#include <poll.h>
#include <sched.h>
#include <stdio.h>

#include "fixtures.h"

/* "Has not returned yet": a wait of this length must run out. */
#define NOT_YET CTP_MSEC(200)

/* ---- helpers ------------------------------------------------------------ */

static void nap_ms(long ms)
{
	nanosleep(&(struct timespec){ ms / 1000, (ms % 1000) * 1000000 }, NULL);
}

/* Waits (bounded by BOUND) until every thread started since base was taken
 * has left; reports the ones still there. Returns their number. */
static int threads_gone(const tu_threads *base)
{
	char left[256];
	int now = -1;
	int extra = tu_threads_back_to(base, BOUND, &now, left, sizeof(left));

	if (extra != 0)
		print_error("threads %d -> %d, left: %s\n", base->n, now, left);
	return extra;
}

/* A thread running ctp_pool_shutdown. */
struct shutter {
	ctp_pool  *pool;
	int64_t    drain, grace;
	atomic_int ret;
	sem_t      returned;
};

static void *shutter_main(void *arg)
{
	struct shutter *s = arg;

	atomic_store(&s->ret, ctp_pool_shutdown(s->pool, s->drain, s->grace));
	tu_sem_post(&s->returned);
	return NULL;
}

static pthread_t shutter_start(struct shutter *s, ctp_pool *pool,
                               int64_t drain, int64_t grace)
{
	s->pool = pool;
	s->drain = drain;
	s->grace = grace;
	atomic_init(&s->ret, UNSET);
	tu_sem_init(&s->returned, 0);
	return tu_spawn(shutter_main, s);
}

/* A thread running ctp_token_cancel, then (optionally) a snapshot. */
struct canceller {
	ctp_token  *token;
	ctp_task   *task;      /* when set: ctp_task_cancel(task) instead */
	void      (*after)(void *arg); /* runs right after the cancel returns */
	void       *after_arg;
	atomic_int  ret;
	sem_t       returned;
};

static void *canceller_main(void *arg)
{
	struct canceller *c = arg;
	int r = c->task != NULL ? ctp_task_cancel(c->task)
	                        : ctp_token_cancel(c->token);

	atomic_store(&c->ret, r);
	if (c->after)
		c->after(c->after_arg);
	tu_sem_post(&c->returned);
	return NULL;
}

static pthread_t canceller_start(struct canceller *c, ctp_token *token,
                                 ctp_task *task)
{
	atomic_init(&c->ret, UNSET);
	tu_sem_init(&c->returned, 0);
	c->token = token;
	c->task = task;
	return tu_spawn(canceller_main, c);
}

/* A done that reports it started, then blocks on a gate (at most BOUND). */
struct gated {
	struct rec r;
	sem_t      in_done;
	sem_t      gate;
	atomic_int gate_ok;     /* the gate opened (not BOUND running out) */
	atomic_int returned;    /* done has returned */
	pthread_t  thread;      /* thread done ran on (read after in_done) */
};

static void gated_init(struct gated *g, int ret)
{
	rec_init(&g->r, ret);
	tu_sem_init(&g->in_done, 0);
	tu_sem_init(&g->gate, 0);
	atomic_init(&g->gate_ok, UNSET);
	atomic_init(&g->returned, 0);
}

static void gated_fini(struct gated *g)
{
	sem_destroy(&g->in_done);
	sem_destroy(&g->gate);
	rec_fini(&g->r);
}

static void gated_done(void *arg, int status)
{
	struct gated *g = arg;

	g->thread = pthread_self();
	atomic_store(&g->r.status, status);
	atomic_fetch_add(&g->r.calls, 1);
	tu_sem_post(&g->in_done);
	atomic_store(&g->gate_ok, sem_wait_for(&g->gate, BOUND));
	atomic_store(&g->returned, 1);
	tu_sem_post(&g->r.done_sem);
}

static int submit_gated(ctp_pool *pool, struct gated *g, ctp_token *parent)
{
	ctp_task_opts o = { .done = gated_done, .parent = parent };

	return ctp_pool_submit(pool, rec_fn, g, &o, NULL);
}

/* ---- item 1: the firer of a group cancel keeps the pool alive ----------- */

/*
 * Thread C cancels a group and catches a queued detached task whose done
 * blocks. shutdown(pool, 0, CTP_FOREVER) must not return while that done
 * runs; then destroy is safe. (Old code: shutdown returned at once, the
 * destroy below freed the pool, and C's finish wrote to it: ASan
 * heap-use-after-free.)
 */
static void test_regress_1_shutdown_waits_for_group_cancel_done(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	struct gated x;
	struct canceller c = { 0 };
	struct shutter sh;
	ctp_token *group = NULL;

	parked_init(&p, 0);
	gated_init(&x, 0);
	assert_int_equal(ctp_token_create(&group, NULL), 0);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(submit_gated(pool, &x, group), 0); /* queued */

	pthread_t ct = canceller_start(&c, group, NULL);
	bool in_done = sem_wait_for(&x.in_done, BOUND);
	/* the worker finishes its task: only C's done is left */
	unpark(&p, 1);
	tu_sem_wait(&p.r.done_sem);

	pthread_t st = shutter_start(&sh, pool, 0, CTP_FOREVER);
	bool early = sem_wait_for(&sh.returned, NOT_YET);
	if (early) {
		/* what a user does once shutdown returned: with the bug, C
		 * then touches freed memory when its done returns */
		assert_int_equal(ctp_pool_destroy(pool), 0);
		pool = NULL;
	}
	tu_sem_post(&x.gate);
	bool c_back = sem_wait_for(&c.returned, BOUND);
	bool sh_back = early || sem_wait_for(&sh.returned, BOUND);
	if (c_back)
		tu_join(ct);
	if (sh_back)
		tu_join(st);
	ctp_stats s = stats_of(pool);
	int dr = pool != NULL ? ctp_pool_destroy(pool) : 0;
	ctp_token_release(group);
	assert_true(in_done);
	assert_false(early); /* shutdown returned while a done still ran */
	assert_true(c_back);
	assert_true(sh_back);
	assert_int_equal(dr, 0);
	assert_int_equal(sh.ret, 0);
	assert_int_equal(c.ret, 0);
	assert_int_equal(x.r.ran, 0);
	assert_int_equal(x.r.calls, 1);
	assert_int_equal(x.r.status, -ECANCELED);
	assert_int_equal(x.gate_ok, 1);
	assert_true(pthread_equal(x.thread, ct));
	assert_int_equal(s.threads, 0);
	assert_identity(&s);
	sem_destroy(&c.returned);
	sem_destroy(&sh.returned);
	gated_fini(&x);
	parked_fini(&p);
}

/* A watcher that reports it runs, then blocks on a gate (at most BOUND). */
struct gwatch {
	sem_t      in_watch;
	sem_t      gate;
	atomic_int ran;
	atomic_int gate_ok;
};

static void gwatch_init(struct gwatch *w)
{
	tu_sem_init(&w->in_watch, 0);
	tu_sem_init(&w->gate, 0);
	atomic_init(&w->ran, 0);
	atomic_init(&w->gate_ok, UNSET);
}

static void gwatch_fini(struct gwatch *w)
{
	sem_destroy(&w->in_watch);
	sem_destroy(&w->gate);
}

static void gwatch_fn(void *arg)
{
	struct gwatch *w = arg;

	atomic_fetch_add(&w->ran, 1);
	tu_sem_post(&w->in_watch);
	atomic_store(&w->gate_ok, sem_wait_for(&w->gate, BOUND));
}

struct idler {
	ctp_pool  *pool;
	atomic_int ret;
	sem_t      returned;
};

static void *idler_main(void *arg)
{
	struct idler *i = arg;

	atomic_store(&i->ret, ctp_pool_wait_idle(i->pool, BOUND));
	tu_sem_post(&i->returned);
	return NULL;
}

struct destroyer {
	ctp_pool  *pool;
	atomic_int ret;
	sem_t      returned;
};

static void *destroyer_main(void *arg)
{
	struct destroyer *d = arg;

	atomic_store(&d->ret, ctp_pool_destroy(d->pool));
	tu_sem_post(&d->returned);
	return NULL;
}

/*
 * C cancels a group: the done of the task it caught queued runs, and a user
 * watcher of the group holds C inside the fire call. Once wait_idle returns
 * the user destroys the pool; C must not touch it afterwards (ASan). When
 * wait_idle returns only after the watcher, the destroy races C's way out
 * of the call instead (not deterministic, but harmless).
 */
static void test_regress_1_destroy_after_wait_idle_while_firer_in_call(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	struct rec x;
	struct gwatch gw;
	struct canceller c = { 0 };
	struct idler id = { .pool = pool };
	struct destroyer d = { .pool = pool };
	ctp_token *group = NULL;
	ctp_watch *w = NULL;

	parked_init(&p, 0);
	rec_init(&x, 0);
	gwatch_init(&gw);
	atomic_init(&id.ret, UNSET);
	atomic_init(&d.ret, UNSET);
	tu_sem_init(&id.returned, 0);
	tu_sem_init(&d.returned, 0);
	assert_int_equal(ctp_token_create(&group, NULL), 0);
	assert_int_equal(ctp_token_watch(group, gwatch_fn, &gw, &w), 0);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(submit_rec(pool, &x,
	                 (ctp_task_opts){ .parent = group }, NULL), 0);

	pthread_t ct = canceller_start(&c, group, NULL);
	bool in_watch = sem_wait_for(&gw.in_watch, BOUND);
	unpark(&p, 1);
	tu_sem_wait(&p.r.done_sem);

	pthread_t it = tu_spawn(idler_main, &id);
	bool idle_first = sem_wait_for(&id.returned, NOT_YET);
	bool destroyed = false;
	pthread_t dt;

	if (idle_first) {
		/* idle while C is still in its watcher: destroy now */
		dt = tu_spawn(destroyer_main, &d);
		destroyed = sem_wait_for(&d.returned, BOUND);
		tu_sem_post(&gw.gate);
	} else {
		tu_sem_post(&gw.gate);
		(void)sem_wait_for(&id.returned, BOUND);
		dt = tu_spawn(destroyer_main, &d);
		destroyed = sem_wait_for(&d.returned, BOUND);
	}
	bool c_back = sem_wait_for(&c.returned, BOUND);
	if (c_back)
		tu_join(ct);
	if (destroyed)
		tu_join(dt);
	tu_join(it);
	ctp_token_unwatch(w);
	ctp_token_release(group);
	assert_true(in_watch);
	assert_true(destroyed);
	assert_true(c_back);
	assert_int_equal(id.ret, 0);
	assert_int_equal(d.ret, 0);
	assert_int_equal(c.ret, 0);
	assert_int_equal(x.ran, 0);
	assert_int_equal(x.calls, 1);
	assert_int_equal(x.status, -ECANCELED);
	assert_int_equal(gw.ran, 1);
	assert_int_equal(gw.gate_ok, 1);
	sem_destroy(&c.returned);
	sem_destroy(&id.returned);
	sem_destroy(&d.returned);
	gwatch_fini(&gw);
	rec_fini(&x);
	parked_fini(&p);
}

/* ---- item 2: two firers in one tree ------------------------------------- */

/* Queued tasks under `sub`: the first done to run blocks on the gate and,
 * when inner_root is set, first cancels that token itself. */
struct tree2 {
	atomic_int calls;       /* dones run (x1 and x2 together) */
	atomic_int bad_status;  /* dones with a status other than -ECANCELED */
	atomic_int ran;         /* fns run */
	sem_t      in_done;
	sem_t      gate;
	atomic_int gate_ok;
	ctp_token *inner_root;  /* cancelled from inside the first done */
	atomic_int inner_ret;
	struct rec *x3;         /* snapshot of x3.calls by the inner cancel */
	atomic_int x3_after_inner;
	/* snapshot taken by A right after its cancel returned */
	atomic_int a_calls;
	atomic_int a_x3_calls;
};

static int tree2_fn(void *arg, ctp_token *tok)
{
	struct tree2 *t = arg;

	(void)tok;
	atomic_fetch_add(&t->ran, 1);
	return 0;
}

static void tree2_done(void *arg, int status)
{
	struct tree2 *t = arg;

	if (status != -ECANCELED)
		atomic_fetch_add(&t->bad_status, 1);
	if (atomic_fetch_add(&t->calls, 1) != 0)
		return;
	if (t->inner_root != NULL) {
		atomic_store(&t->inner_ret, ctp_token_cancel(t->inner_root));
		atomic_store(&t->x3_after_inner, atomic_load(&t->x3->calls));
	}
	tu_sem_post(&t->in_done);
	atomic_store(&t->gate_ok, sem_wait_for(&t->gate, BOUND));
}

static void tree2_init(struct tree2 *t, struct rec *x3)
{
	memset(t, 0, sizeof(*t));
	tu_sem_init(&t->in_done, 0);
	tu_sem_init(&t->gate, 0);
	atomic_init(&t->gate_ok, UNSET);
	atomic_init(&t->inner_ret, UNSET);
	atomic_init(&t->x3_after_inner, UNSET);
	atomic_init(&t->a_calls, UNSET);
	atomic_init(&t->a_x3_calls, UNSET);
	t->x3 = x3;
}

static void tree2_fini(struct tree2 *t)
{
	sem_destroy(&t->in_done);
	sem_destroy(&t->gate);
}

static void tree2_snapshot(void *arg)
{
	struct tree2 *t = arg;

	atomic_store(&t->a_calls, atomic_load(&t->calls));
	atomic_store(&t->a_x3_calls, atomic_load(&t->x3->calls));
}

/* root -> sub -> {x1, x2} and root -> x3, all queued behind a parked
 * worker. */
static void tree2_build(ctp_pool *pool, struct parked *p, struct tree2 *t,
                        struct rec *x3, ctp_token **root, ctp_token **sub)
{
	ctp_task_opts o = { .done = tree2_done };

	assert_int_equal(submit(pool, parked_fn, p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p->started);
	assert_int_equal(ctp_token_create(root, NULL), 0);
	assert_int_equal(ctp_token_create(sub, *root), 0);
	o.parent = *sub;
	for (int i = 0; i < 2; i++)
		assert_int_equal(ctp_pool_submit(pool, tree2_fn, t, &o, NULL), 0);
	assert_int_equal(submit_rec(pool, x3,
	                 (ctp_task_opts){ .parent = *root }, NULL), 0);
}

/* The race of the "A waits for B" cases: B fires b_token (or cancels
 * b_task) and is held inside the first done; A cancels root, and has
 * NOT_YET to return before the gate opens; then both are joined, the
 * parked worker goes on, and the pool is waited for and destroyed. */
struct race2 {
	bool      b_in, a_early, a_back, b_back;
	int       ir, dr;
	ctp_stats s;
};

static struct race2 tree2_race(ctp_pool *pool, struct parked *p,
                               struct tree2 *t, struct canceller *b,
                               ctp_token *b_token, ctp_task *b_task,
                               struct canceller *a, ctp_token *root)
{
	struct race2 o;
	pthread_t bt = canceller_start(b, b_token, b_task), at;

	o.b_in = sem_wait_for(&t->in_done, BOUND);
	a->after = tree2_snapshot;
	a->after_arg = t;
	at = canceller_start(a, root, NULL);
	o.a_early = sem_wait_for(&a->returned, NOT_YET);
	tu_sem_post(&t->gate);
	o.a_back = o.a_early || sem_wait_for(&a->returned, BOUND);
	o.b_back = sem_wait_for(&b->returned, BOUND);
	if (o.a_back)
		tu_join(at);
	if (o.b_back)
		tu_join(bt);
	unpark(p, 1);
	o.ir = ctp_pool_wait_idle(pool, BOUND);
	o.s = stats_of(pool);
	o.dr = ctp_pool_destroy(pool);
	return o;
}

/*
 * B cancels sub and is held inside the done of one of sub's queued tasks.
 * A's cancel of root must not return before the other task of sub has had
 * its done too. (Old code: A returned 0 at once, with one of sub's tasks
 * still waiting for its done.)
 */
static void test_regress_2_root_cancel_waits_for_sub_firer(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	struct tree2 t;
	struct rec x3;
	struct canceller b = { 0 }, a = { 0 };
	ctp_token *root = NULL, *sub = NULL;

	parked_init(&p, 0);
	rec_init(&x3, 0);
	tree2_init(&t, &x3);
	tree2_build(pool, &p, &t, &x3, &root, &sub);

	struct race2 o = tree2_race(pool, &p, &t, &b, sub, NULL, &a, root);
	ctp_token_release(sub);
	ctp_token_release(root);

	assert_int_equal(o.ir, 0);
	assert_int_equal(o.dr, 0);
	assert_true(o.b_in);
	assert_true(o.a_back);
	assert_true(o.b_back);
	assert_int_equal(a.ret, 0);     /* A fired root */
	assert_int_equal(b.ret, 0);     /* B fired sub */
	/* when A returned, every queued task of root's tree had its done */
	assert_int_equal(t.a_x3_calls, 1);
	assert_int_equal(t.a_calls, 2);
	assert_false(o.a_early);
	assert_int_equal(t.calls, 2);
	assert_int_equal(t.ran, 0);
	assert_int_equal(t.bad_status, 0);
	assert_int_equal(t.gate_ok, 1);
	assert_int_equal(x3.ran, 0);
	assert_int_equal(x3.calls, 1);
	assert_int_equal(x3.status, -ECANCELED);
	assert_int_equal(o.s.cancelled, 3);
	assert_identity(&o.s);
	sem_destroy(&a.returned);
	sem_destroy(&b.returned);
	tree2_fini(&t);
	rec_fini(&x3);
	parked_fini(&p);
}

/*
 * The same with a child task as the subtree B fires: B cancels task x1
 * (a child of root, by its handle) and is held inside x1's done; A's
 * cancel of root meets x1 with B's fire in progress and must wait for it.
 * A child task has no ext (token.c, "Two parts"): A's wait list must be
 * linked through the token itself (on 80c2318 it went through the ext:
 * an assertion failure, or a write through NULL without asserts).
 */
static void test_regress_2_root_cancel_waits_for_child_task_firer(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	struct tree2 t;
	struct rec x3;
	struct canceller b = { 0 }, a = { 0 };
	ctp_token *root = NULL;
	ctp_task *x1 = NULL;
	ctp_task_opts opts = { .done = tree2_done };

	parked_init(&p, 0);
	rec_init(&x3, 0);
	tree2_init(&t, &x3);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(ctp_token_create(&root, NULL), 0);
	opts.parent = root;
	assert_int_equal(ctp_pool_submit(pool, tree2_fn, &t, &opts, &x1), 0);
	assert_int_equal(submit_rec(pool, &x3,
	                 (ctp_task_opts){ .parent = root }, NULL), 0);

	struct race2 o = tree2_race(pool, &p, &t, &b, NULL, x1, &a, root);
	ctp_task_release(x1);
	ctp_token_release(root);

	assert_int_equal(o.ir, 0);
	assert_int_equal(o.dr, 0);
	assert_true(o.b_in);
	assert_true(o.a_back);
	assert_true(o.b_back);
	assert_int_equal(b.ret, 0);     /* B caught x1 queued */
	assert_int_equal(a.ret, 0);     /* A fired root */
	assert_false(o.a_early);          /* A waited for B's fire of x1 */
	assert_int_equal(t.a_calls, 1);
	assert_int_equal(t.a_x3_calls, 1);
	assert_int_equal(t.calls, 1);
	assert_int_equal(t.ran, 0);
	assert_int_equal(t.bad_status, 0);
	assert_int_equal(t.gate_ok, 1);
	assert_int_equal(x3.ran, 0);
	assert_int_equal(x3.calls, 1);
	assert_int_equal(x3.status, -ECANCELED);
	assert_int_equal(o.s.cancelled, 2);
	assert_identity(&o.s);
	sem_destroy(&a.returned);
	sem_destroy(&b.returned);
	tree2_fini(&t);
	rec_fini(&x3);
	parked_fini(&p);
}

/*
 * The exception: inside the done that B's fire of sub runs, B itself
 * cancels root. That cancel fires root (x3 gets its done) and must not wait
 * for B's own fire of sub.
 */
static void test_regress_2_cancel_root_from_sub_done_no_self_deadlock(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	struct tree2 t;
	struct rec x3;
	struct canceller b = { 0 };
	ctp_token *root = NULL, *sub = NULL;

	parked_init(&p, 0);
	rec_init(&x3, 0);
	tree2_init(&t, &x3);
	tree2_build(pool, &p, &t, &x3, &root, &sub);
	t.inner_root = root;

	pthread_t bt = canceller_start(&b, sub, NULL);
	bool b_in = sem_wait_for(&t.in_done, BOUND);
	tu_sem_post(&t.gate);
	bool b_back = sem_wait_for(&b.returned, BOUND);
	if (!b_in || !b_back)
		fail_msg("cancel(root) inside a done of sub's fire deadlocked "
		         "(in_done %d, returned %d)", b_in, b_back);
	tu_join(bt);
	unpark(&p, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);

	assert_int_equal(t.inner_ret, 0);     /* it fired root */
	assert_int_equal(t.x3_after_inner, 1); /* and finished x3 */
	assert_int_equal(b.ret, 0);
	assert_int_equal(t.calls, 2);
	assert_int_equal(t.ran, 0);
	assert_int_equal(t.bad_status, 0);
	assert_int_equal(x3.calls, 1);
	assert_int_equal(x3.ran, 0);
	assert_int_equal(x3.status, -ECANCELED);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.cancelled, 3);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_token_release(sub);
	ctp_token_release(root);
	sem_destroy(&b.returned);
	tree2_fini(&t);
	rec_fini(&x3);
	parked_fini(&p);
}

/* ---- item 4: a second shutdown during the first one's drop step -------- */

/*
 * S1 = shutdown(0, FOREVER) is in its drop step, inside the done of a
 * dropped task; the worker has exited. S2 = shutdown(0, grace) from another
 * thread. Returns S2's answer while the done still ran (UNSET if S2 had not
 * returned within NOT_YET), and whether that done had returned then.
 */
struct drop4 {
	ctp_pool      *pool;
	struct parked  p;
	struct gated   x;
	struct shutter s1;
	pthread_t      s1t;
	bool           in_done;
};

static void drop4_start(struct drop4 *d)
{
	d->pool = pool_new(1, 0);
	parked_init(&d->p, 0);
	gated_init(&d->x, 0);
	assert_int_equal(submit(d->pool, parked_fn, &d->p, NO_OPTS, NULL), 0);
	tu_sem_wait(&d->p.started);
	assert_int_equal(submit_gated(d->pool, &d->x, NULL), 0); /* queued */
	d->s1t = shutter_start(&d->s1, d->pool, 0, CTP_FOREVER);
	d->in_done = sem_wait_for(&d->x.in_done, BOUND);
	/* the parked task returns; its worker then exits (stopping) */
	unpark(&d->p, 1);
	tu_sem_wait(&d->p.r.done_sem);
	/* not an ordering: only makes the old code's answer certain */
	for (int i = 0; i < 2000 && stats_of(d->pool).threads != 0; i++)
		nap_ms(1);
}

static void drop4_finish(struct drop4 *d, bool *s1_back)
{
	tu_sem_post(&d->x.gate);
	*s1_back = sem_wait_for(&d->s1.returned, BOUND);
	if (*s1_back)
		tu_join(d->s1t);
}

static void drop4_check_and_free(struct drop4 *d, bool s1_back)
{
	int sr = ctp_pool_shutdown(d->pool, 0, CTP_FOREVER);
	ctp_stats s = stats_of(d->pool);
	int dr = ctp_pool_destroy(d->pool);

	assert_int_equal(sr, 0);
	assert_int_equal(dr, 0);
	assert_true(d->in_done);
	assert_true(s1_back);
	assert_int_equal(d->s1.ret, 0);
	assert_int_equal(d->x.r.calls, 1);
	assert_int_equal(d->x.r.status, -ESHUTDOWN);
	assert_int_equal(d->x.r.ran, 0);
	assert_int_equal(d->x.gate_ok, 1);
	assert_true(pthread_equal(d->x.thread, d->s1t)); /* S1 ran it */
	assert_int_equal(s.dropped, 1);
	assert_int_equal(s.threads, 0);
	assert_identity(&s);
	sem_destroy(&d->s1.returned);
	gated_fini(&d->x);
	parked_fini(&d->p);
}

/* Grace CTP_FOREVER: S2 returns 0 only after the dropped task's done. */
static void test_regress_4_second_shutdown_waits_for_drop_dones(void **state)
{
	(void)state;
	struct drop4 d;
	struct shutter s2;
	bool s1_back;

	drop4_start(&d);
	pthread_t s2t = shutter_start(&s2, d.pool, 0, CTP_FOREVER);
	bool early = sem_wait_for(&s2.returned, NOT_YET);
	int done_back_then = atomic_load(&d.x.returned);
	drop4_finish(&d, &s1_back);
	bool s2_back = early || sem_wait_for(&s2.returned, BOUND);
	if (s2_back)
		tu_join(s2t);
	drop4_check_and_free(&d, s1_back);
	assert_false(early); /* returned while done(-ESHUTDOWN) still ran */
	assert_int_equal(done_back_then, 0);
	assert_true(s2_back);
	assert_int_equal(s2.ret, 0);
	sem_destroy(&s2.returned);
}

/* Grace 0: S2 returns -ETIMEDOUT while the done still runs. */
static void test_regress_4_second_shutdown_grace0_times_out(void **state)
{
	(void)state;
	struct drop4 d;
	struct shutter s2;
	bool s1_back;

	drop4_start(&d);
	pthread_t s2t = shutter_start(&s2, d.pool, 0, 0);
	bool s2_back = sem_wait_for(&s2.returned, BOUND);
	int done_back_then = atomic_load(&d.x.returned);
	drop4_finish(&d, &s1_back);
	if (!s2_back)
		s2_back = sem_wait_for(&s2.returned, BOUND);
	if (s2_back)
		tu_join(s2t);
	drop4_check_and_free(&d, s1_back);
	assert_true(s2_back);
	assert_int_equal(done_back_then, 0);
	assert_int_equal(s2.ret, -ETIMEDOUT);
	sem_destroy(&s2.returned);
}

/* ---- item 5: watches ---------------------------------------------------- */

struct self5 {
	ctp_watch *w0, *w;
	sem_t      ready, woke, unwatched, w0_in, w0_gate;
	atomic_int w0_ran, w_ran;
	atomic_int w0_gate_ok;
	atomic_int watch_ret;
	atomic_int sleep_ret;
	atomic_int w_ran_at_unwatch;  /* w_ran right after unwatch(W) */
};

static void self5_w0(void *arg)
{
	struct self5 *s = arg;

	atomic_fetch_add(&s->w0_ran, 1);
	tu_sem_post(&s->w0_in);
	atomic_store(&s->w0_gate_ok, sem_wait_for(&s->w0_gate, BOUND));
}

static void self5_w(void *arg)
{
	struct self5 *s = arg;

	atomic_fetch_add(&s->w_ran, 1);
}

static int self5_fn(void *arg, ctp_token *tok)
{
	struct self5 *s = arg;
	int r0 = ctp_token_watch(tok, self5_w0, s, &s->w0);
	int r1 = ctp_token_watch(tok, self5_w, s, &s->w);

	atomic_store(&s->watch_ret, r0 != 0 ? r0 : r1);
	tu_sem_post(&s->ready);
	atomic_store(&s->sleep_ret, ctp_token_sleep(tok, CTP_FOREVER));
	tu_sem_post(&s->woke);
	ctp_token_unwatch(s->w);
	atomic_store(&s->w_ran_at_unwatch, atomic_load(&s->w_ran));
	tu_sem_post(&s->unwatched);
	ctp_token_unwatch(s->w0);
	return 0;
}

/*
 * The task watches its own token (W0 blocks on a gate, W counts), sleeps,
 * and is cancelled from another thread. Once awake it unwatches W while the
 * firer is still held in W0: the unwatch must wait for the firer to run W.
 * (Old code: the unwatch removed W, which never ran.)
 */
static void test_regress_5_unwatch_after_fire_waits_for_pending_watch(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct self5 s;
	struct canceller c = { 0 };
	ctp_task *t = NULL;
	int st = UNSET;

	memset(&s, 0, sizeof(s));
	tu_sem_init(&s.ready, 0);
	tu_sem_init(&s.woke, 0);
	tu_sem_init(&s.unwatched, 0);
	tu_sem_init(&s.w0_in, 0);
	tu_sem_init(&s.w0_gate, 0);
	atomic_init(&s.w0_gate_ok, UNSET);
	atomic_init(&s.watch_ret, UNSET);
	atomic_init(&s.sleep_ret, UNSET);
	atomic_init(&s.w_ran_at_unwatch, UNSET);
	assert_int_equal(ctp_pool_submit(pool, self5_fn, &s, NULL, &t), 0);
	tu_sem_wait(&s.ready);

	pthread_t ct = canceller_start(&c, NULL, t);
	bool woke = sem_wait_for(&s.woke, BOUND);
	/* W0 still holds the firer: unwatch(W) cannot have returned */
	bool unwatch_early = sem_wait_for(&s.unwatched, NOT_YET);
	tu_sem_post(&s.w0_gate);
	int wr = ctp_task_wait(t, BOUND, &st);
	bool c_back = sem_wait_for(&c.returned, BOUND);
	if (c_back)
		tu_join(ct);
	ctp_task_release(t);
	int dr = ctp_pool_destroy(pool);
	assert_int_equal(dr, 0);
	assert_true(woke);
	assert_int_equal(wr, 0);
	assert_true(c_back);
	assert_int_equal(s.watch_ret, 0);
	assert_int_equal(s.w_ran_at_unwatch, 1); /* W ran before unwatch returned */
	assert_false(unwatch_early);
	assert_int_equal(c.ret, -EINPROGRESS);
	assert_int_equal(s.sleep_ret, -ECANCELED);
	assert_int_equal(s.w0_ran, 1);
	assert_int_equal(s.w0_gate_ok, 1);
	assert_int_equal(s.w_ran, 1);
	assert_int_equal(st, 0);
	sem_destroy(&c.returned);
	sem_destroy(&s.ready);
	sem_destroy(&s.woke);
	sem_destroy(&s.unwatched);
	sem_destroy(&s.w0_in);
	sem_destroy(&s.w0_gate);
}

/* Order: the dones of queued tasks caught by the fire run before the user
 * watchers of the tree, and one token's watchers run in registration
 * order. */
struct order5 {
	struct rec *x;
	atomic_int  seq;
	atomic_int  x_calls_seen[2];
	atomic_int  pos[2];
};

static void order5_w0(void *arg)
{
	struct order5 *o = arg;

	atomic_store(&o->x_calls_seen[0], atomic_load(&o->x->calls));
	atomic_store(&o->pos[0], atomic_fetch_add(&o->seq, 1));
}

static void order5_w1(void *arg)
{
	struct order5 *o = arg;

	atomic_store(&o->x_calls_seen[1], atomic_load(&o->x->calls));
	atomic_store(&o->pos[1], atomic_fetch_add(&o->seq, 1));
}

static void test_regress_5_dones_run_before_user_watchers(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	struct rec x;
	struct order5 o;
	ctp_token *group = NULL, *sub = NULL;
	ctp_watch *w0 = NULL, *w1 = NULL;

	parked_init(&p, 0);
	rec_init(&x, 0);
	memset(&o, 0, sizeof(o));
	o.x = &x;
	for (int i = 0; i < 2; i++) {
		atomic_init(&o.x_calls_seen[i], UNSET);
		atomic_init(&o.pos[i], UNSET);
	}
	assert_int_equal(ctp_token_create(&group, NULL), 0);
	assert_int_equal(ctp_token_create(&sub, group), 0);
	/* w0 on the root, w1 on the child; x is queued under the child */
	assert_int_equal(ctp_token_watch(group, order5_w0, &o, &w0), 0);
	assert_int_equal(ctp_token_watch(sub, order5_w1, &o, &w1), 0);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(submit_rec(pool, &x,
	                 (ctp_task_opts){ .parent = sub }, NULL), 0);

	int cr = ctp_token_cancel(group);
	unpark(&p, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_token_unwatch(w0);
	ctp_token_unwatch(w1);
	ctp_token_release(sub);
	ctp_token_release(group);
	assert_int_equal(cr, 0);
	assert_int_equal(x.calls, 1);
	assert_int_equal(x.status, -ECANCELED);
	assert_true(done_here(&x));
	assert_int_equal(o.x_calls_seen[0], 1); /* done before the watcher */
	assert_int_equal(o.x_calls_seen[1], 1);
	assert_int_equal(o.seq, 2);
	rec_fini(&x);
	parked_fini(&p);
}

/* One watcher among several of a token: records its position. */
struct pos5 {
	atomic_int *seq;
	atomic_int  pos;
};

static void pos5_fn(void *arg)
{
	struct pos5 *p = arg;

	atomic_store(&p->pos, atomic_fetch_add(p->seq, 1));
}

static void test_regress_5_watchers_run_in_registration_order(void **state)
{
	(void)state;
	enum { N = 6 };
	atomic_int seq;
	struct pos5 p[N];
	ctp_token *tk = NULL;
	ctp_watch *w[N];

	atomic_init(&seq, 0);
	assert_int_equal(ctp_token_create(&tk, NULL), 0);
	for (int i = 0; i < N; i++) {
		p[i].seq = &seq;
		atomic_init(&p[i].pos, UNSET);
		assert_int_equal(ctp_token_watch(tk, pos5_fn, &p[i], &w[i]), 0);
	}
	ctp_token_unwatch(w[2]); /* a hole in the list */
	assert_int_equal(ctp_token_cancel(tk), 0);
	assert_int_equal(seq, N - 1);
	for (int i = 0, k = 0; i < N; i++) {
		if (i == 2) {
			assert_int_equal(p[i].pos, UNSET);
			continue;
		}
		assert_int_equal(p[i].pos, k++);
		ctp_token_unwatch(w[i]);
	}
	ctp_token_release(tk);
}

/* From inside a watcher, unwatching another not-yet-run watch of the token
 * this thread is firing removes it without running it, and returns. */
struct unw5 {
	_Atomic(ctp_watch *) other;
	atomic_int first_ran, other_ran, first_back;
};

static void unw5_first(void *arg)
{
	struct unw5 *u = arg;

	atomic_fetch_add(&u->first_ran, 1);
	ctp_token_unwatch(atomic_load(&u->other));
	atomic_store(&u->first_back, 1);
}

static void unw5_other(void *arg)
{
	struct unw5 *u = arg;

	atomic_fetch_add(&u->other_ran, 1);
}

static void test_regress_5_unwatch_other_from_watcher_no_self_deadlock(
    void **state)
{
	(void)state;
	struct unw5 u;
	struct canceller c = { 0 };
	ctp_token *tk = NULL;
	ctp_watch *w1 = NULL, *w2 = NULL;

	memset(&u, 0, sizeof(u));
	assert_int_equal(ctp_token_create(&tk, NULL), 0);
	assert_int_equal(ctp_token_watch(tk, unw5_first, &u, &w1), 0);
	assert_int_equal(ctp_token_watch(tk, unw5_other, &u, &w2), 0);
	atomic_store(&u.other, w2);
	pthread_t ct = canceller_start(&c, tk, NULL);
	if (!sem_wait_for(&c.returned, BOUND))
		fail_msg("unwatch of a pending watch from inside a watcher of "
		         "the same fire deadlocked");
	tu_join(ct);
	assert_int_equal(c.ret, 0);
	assert_int_equal(u.first_ran, 1);
	assert_int_equal(u.first_back, 1);
	assert_int_equal(u.other_ran, 0);
	ctp_token_unwatch(w1);
	ctp_token_release(tk);
	sem_destroy(&c.returned);
}

/* ---- item 10: an abandoned worker calls its destroyed pool -------------- */

struct late10 {
	ctp_pool  *pool;
	ctp_token *parent;
	sem_t      started, go, finished;
	atomic_int go_ok;
	atomic_int sub_plain, sub_handle, sub_timeout, sub_wait, sub_parent;
	atomic_int shut, idle;
	atomic_uint threads;
};

static int late10_fn(void *arg, ctp_token *tok)
{
	struct late10 *l = arg;
	ctp_task *t = NULL;
	ctp_stats s;

	(void)tok;
	tu_sem_post(&l->started);
	atomic_store(&l->go_ok, sem_wait_for(&l->go, BOUND));
	atomic_store(&l->sub_plain,
	             ctp_pool_submit(l->pool, noop_fn, NULL, NULL, NULL));
	atomic_store(&l->sub_handle,
	             ctp_pool_submit(l->pool, noop_fn, NULL, NULL, &t));
	atomic_store(&l->sub_timeout, ctp_pool_submit(l->pool, noop_fn, NULL,
	             &(ctp_task_opts){ .timeout = CTP_MSEC(10) }, NULL));
	atomic_store(&l->sub_wait, ctp_pool_submit(l->pool, noop_fn, NULL,
	             &(ctp_task_opts){ .queue_wait = CTP_FOREVER }, NULL));
	atomic_store(&l->sub_parent, ctp_pool_submit(l->pool, noop_fn, NULL,
	             &(ctp_task_opts){ .parent = l->parent }, NULL));
	if (t != NULL)
		ctp_task_release(t);
	atomic_store(&l->shut, ctp_pool_shutdown(l->pool, 0, 0));
	atomic_store(&l->idle, ctp_pool_wait_idle(l->pool, 0));
	memset(&s, 0, sizeof(s));
	ctp_pool_stats(l->pool, &s);
	atomic_store(&l->threads, s.threads);
	tu_sem_post(&l->finished); /* the last thing it does */
	return 0;
}

/*
 * A task ignores its token: shutdown(0, 0) abandons its worker and destroy
 * returns; then the task calls its pool: every submit answers -ESHUTDOWN,
 * shutdown and wait_idle -EDEADLK, nothing crashes or leaks.
 */
static void test_regress_10_abandoned_worker_submits_after_destroy(
    void **state)
{
	(void)state;
	static tu_threads base;
	ctp_pool *pool;
	struct late10 l;

	tu_threads_baseline(&base);
	pool = pool_new(1, 0);

	memset(&l, 0, sizeof(l));
	l.pool = pool;
	tu_sem_init(&l.started, 0);
	tu_sem_init(&l.go, 0);
	tu_sem_init(&l.finished, 0);
	atomic_init(&l.go_ok, UNSET);
	atomic_init(&l.sub_plain, UNSET);
	atomic_init(&l.sub_handle, UNSET);
	atomic_init(&l.sub_timeout, UNSET);
	atomic_init(&l.sub_wait, UNSET);
	atomic_init(&l.sub_parent, UNSET);
	atomic_init(&l.shut, UNSET);
	atomic_init(&l.idle, UNSET);
	assert_int_equal(ctp_token_create(&l.parent, NULL), 0);
	assert_int_equal(ctp_pool_submit(pool, late10_fn, &l, NULL, NULL), 0);
	tu_sem_wait(&l.started);

	int sr = ctp_pool_shutdown(pool, 0, 0);
	int dr = ctp_pool_destroy(pool);
	tu_sem_post(&l.go);
	bool finished = sem_wait_for(&l.finished, BOUND);
	int left = threads_gone(&base);

	ctp_token_release(l.parent);
	assert_int_equal(sr, -ETIMEDOUT);
	assert_int_equal(dr, 0);
	assert_true(finished);
	assert_int_equal(l.go_ok, 1);
	assert_int_equal(l.sub_plain, -ESHUTDOWN);
	assert_int_equal(l.sub_handle, -ESHUTDOWN);
	assert_int_equal(l.sub_timeout, -ESHUTDOWN);
	assert_int_equal(l.sub_wait, -ESHUTDOWN);
	assert_int_equal(l.sub_parent, -ESHUTDOWN);
	assert_int_equal(l.shut, -EDEADLK);
	assert_int_equal(l.idle, -EDEADLK);
	assert_int_equal(left, 0);
	sem_destroy(&l.started);
	sem_destroy(&l.go);
	sem_destroy(&l.finished);
}

/* Three tasks keep submitting follow-up work while the owner shuts the
 * pool down with grace 0 and destroys it, 500 times (old code: a submit
 * preempted between its "closed" check and its allocation met the dead
 * free list, UBSan at task.c:93 then SIGSEGV, in 5 runs out of 6; 50
 * rounds were not enough to hit it under ASan). */
static struct {
	atomic_int in_fn;       /* task functions running now */
	atomic_int submits;     /* accepted submits of the loopers */
	atomic_int bad;         /* unexpected answers */
	atomic_int last_bad;
	atomic_int timed_out;   /* a looper never saw -ESHUTDOWN */
	sem_t      started;
} loop10;

/* One per round: a looper abandoned by an earlier round's shutdown may
 * still wait for its round's `go`; with one semaphore for all rounds it
 * could take a post meant for a later round's looper, which would then
 * start flooding its pool before the test has submitted all three. */
#define LOOP10_ROUNDS 500
static struct round10 {
	ctp_pool *pool;
	sem_t     go;           /* all three run: start submitting */
} round10[LOOP10_ROUNDS];

static bool loop10_ok(int r)
{
	return r == 0 || r == -EAGAIN || r == -ESHUTDOWN;
}

static int follow10_fn(void *arg, ctp_token *tok)
{
	ctp_pool *pool = arg;
	int r;

	(void)tok;
	atomic_fetch_add(&loop10.in_fn, 1);
	r = ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL);
	if (!loop10_ok(r)) {
		atomic_fetch_add(&loop10.bad, 1);
		atomic_store(&loop10.last_bad, r);
	}
	atomic_fetch_sub(&loop10.in_fn, 1); /* the last thing it does */
	return 0;
}

static int looper10_fn(void *arg, ctp_token *tok)
{
	struct round10 *rd = arg;
	ctp_pool *pool = rd->pool;
	int64_t end = tu_now_ns() + 2 * BOUND;

	(void)tok;
	atomic_fetch_add(&loop10.in_fn, 1);
	tu_sem_post(&loop10.started);
	tu_sem_wait(&rd->go);
	for (;;) {
		int r = ctp_pool_submit(pool, follow10_fn, pool, NULL, NULL);

		if (r == -ESHUTDOWN)
			break;
		if (r == 0)
			atomic_fetch_add(&loop10.submits, 1);
		if (!loop10_ok(r)) {
			atomic_fetch_add(&loop10.bad, 1);
			atomic_store(&loop10.last_bad, r);
			break;
		}
		if (tu_now_ns() > end) {
			atomic_fetch_add(&loop10.timed_out, 1);
			break;
		}
		if (r == -EAGAIN)
			sched_yield();
	}
	atomic_fetch_sub(&loop10.in_fn, 1); /* the last thing it does */
	return 0;
}

static void test_regress_10_submitters_during_shutdown0_destroy_loop(
    void **state)
{
	(void)state;
	static int failures;
	static tu_threads base;
	int rounds = (int)tu_scaled(500, 20);

	tu_threads_baseline(&base);
	failures = 0;
	memset(&loop10, 0, sizeof(loop10));
	tu_sem_init(&loop10.started, 0);
	assert_true(rounds <= LOOP10_ROUNDS);
	for (int i = 0; i < rounds; i++) {
		ctp_pool *pool = pool_new(4, 64);
		struct round10 *rd = &round10[i];

		rd->pool = pool;
		tu_sem_init(&rd->go, 0);
		for (int k = 0; k < 3; k++)
			assert_int_equal(ctp_pool_submit(pool, looper10_fn,
			                 rd, NULL, NULL), 0);
		for (int k = 0; k < 3; k++)
			tu_sem_wait(&loop10.started);
		int base = atomic_load(&loop10.submits);
		for (int k = 0; k < 3; k++)
			tu_sem_post(&rd->go);
		/* let them get going (bounded): the shutdown lands mid-submit */
		int64_t until = tu_now_ns() + BOUND;
		while (atomic_load(&loop10.submits) - base < 32 &&
		       tu_now_ns() < until)
			sched_yield();
		int sr = ctp_pool_shutdown(pool, 0, 0);
		CHECK(sr == 0 || sr == -ETIMEDOUT, "round %d: shutdown %d\n",
		      i, sr);
		int dr = ctp_pool_destroy(pool);
		CHECK(dr == 0, "round %d: destroy %d\n", i, dr);
	}
	/* every task function has returned and every thread has left */
	int64_t end = tu_now_ns() + BOUND;
	while (atomic_load(&loop10.in_fn) != 0 && tu_now_ns() < end)
		nap_ms(1);
	int in_fn = atomic_load(&loop10.in_fn);
	int left = threads_gone(&base);
	sem_destroy(&loop10.started);
	for (int i = 0; i < rounds; i++)
		sem_destroy(&round10[i].go);
	assert_int_equal(failures, 0);
	assert_int_equal(in_fn, 0);
	assert_int_equal(left, 0);
	assert_int_equal(loop10.bad, 0);
	assert_int_equal(loop10.timed_out, 0);
}

/* ---- item 11: a slow group watcher does not delay the wake-ups ---------- */

struct wake11 {
	ctp_queue *q;
	sem_t      started;
	sem_t      woke[3];      /* sleep, fd poll, queue pop */
	atomic_int sleep_ret;
	atomic_int fd_ret;       /* ctp_token_fd, then poll's count */
	atomic_int fd_revents;
	atomic_int pop_ret;
};

static int wake11_sleep_fn(void *arg, ctp_token *tok)
{
	struct wake11 *w = arg;

	tu_sem_post(&w->started);
	atomic_store(&w->sleep_ret, ctp_token_sleep(tok, CTP_FOREVER));
	tu_sem_post(&w->woke[0]);
	return 0;
}

static int wake11_fd_fn(void *arg, ctp_token *tok)
{
	struct wake11 *w = arg;
	int fd = ctp_token_fd(tok);

	tu_sem_post(&w->started);
	if (fd < 0) {
		atomic_store(&w->fd_ret, fd);
	} else {
		/* bounded: 2 * BOUND, after the gate opens at the latest */
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int n;

		do
			n = poll(&pfd, 1, (int)(2 * BOUND / 1000000));
		while (n < 0 && errno == EINTR);
		atomic_store(&w->fd_ret, n);
		atomic_store(&w->fd_revents, pfd.revents);
	}
	tu_sem_post(&w->woke[1]);
	return 0;
}

static int wake11_pop_fn(void *arg, ctp_token *tok)
{
	struct wake11 *w = arg;
	void *item = NULL;

	tu_sem_post(&w->started);
	atomic_store(&w->pop_ret, ctp_queue_pop(w->q, &item, tok, CTP_FOREVER));
	tu_sem_post(&w->woke[2]);
	return 0;
}

/*
 * group -> {sleeping task, popping task} and group -> sub -> polling task,
 * all running; a user watcher on group blocks on a gate. Cancelling group
 * must wake all three while the watcher is still blocked. (Old code: the
 * watcher ran before the children were woken.)
 */
static void test_regress_11_slow_group_watcher_does_not_delay_wakeups(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(3, 0);
	struct wake11 w;
	struct gwatch gw;
	struct canceller c = { 0 };
	ctp_token *group = NULL, *sub = NULL;
	ctp_watch *wg = NULL;
	static const char *what[3] = { "sleep", "fd poll", "queue pop" };

	memset(&w, 0, sizeof(w));
	tu_sem_init(&w.started, 0);
	for (int i = 0; i < 3; i++)
		tu_sem_init(&w.woke[i], 0);
	atomic_init(&w.sleep_ret, UNSET);
	atomic_init(&w.fd_ret, UNSET);
	atomic_init(&w.fd_revents, 0);
	atomic_init(&w.pop_ret, UNSET);
	gwatch_init(&gw);
	assert_int_equal(ctp_queue_create(&w.q, 4), 0);
	assert_int_equal(ctp_token_create(&group, NULL), 0);
	assert_int_equal(ctp_token_create(&sub, group), 0);
	assert_int_equal(ctp_token_watch(group, gwatch_fn, &gw, &wg), 0);
	assert_int_equal(ctp_pool_submit(pool, wake11_sleep_fn, &w,
	                 &(ctp_task_opts){ .parent = group }, NULL), 0);
	assert_int_equal(ctp_pool_submit(pool, wake11_fd_fn, &w,
	                 &(ctp_task_opts){ .parent = sub }, NULL), 0);
	assert_int_equal(ctp_pool_submit(pool, wake11_pop_fn, &w,
	                 &(ctp_task_opts){ .parent = group }, NULL), 0);
	for (int i = 0; i < 3; i++)
		tu_sem_wait(&w.started);

	pthread_t ct = canceller_start(&c, group, NULL);
	int64_t end = tu_now_ns() + BOUND;
	bool woke[3];
	for (int i = 0; i < 3; i++) {
		int64_t left = end - tu_now_ns();

		woke[i] = sem_wait_for(&w.woke[i], left > 0 ? left : 0);
	}
	int watch_ran = atomic_load(&gw.ran);
	tu_sem_post(&gw.gate); /* the slow watcher ends */
	for (int i = 0; i < 3; i++)
		if (!woke[i])
			(void)sem_wait_for(&w.woke[i], 3 * BOUND);
	bool c_back = sem_wait_for(&c.returned, BOUND);
	if (c_back)
		tu_join(ct);
	int ir = ctp_pool_wait_idle(pool, BOUND);
	int dr = ctp_pool_destroy(pool);
	ctp_token_unwatch(wg);
	ctp_token_release(sub);
	ctp_token_release(group);
	ctp_queue_destroy(w.q);
	assert_int_equal(ir, 0);
	assert_int_equal(dr, 0);
	for (int i = 0; i < 3; i++)
		if (!woke[i])
			fail_msg("%s was not woken while the group watcher ran "
			         "(watcher had run: %d)", what[i], watch_ran);
	assert_true(c_back);
	assert_int_equal(c.ret, 0);
	assert_int_equal(w.sleep_ret, -ECANCELED);
	assert_int_equal(w.fd_ret, 1);
	assert_true(w.fd_revents & POLLIN);
	assert_int_equal(w.pop_ret, -ECANCELED);
	assert_int_equal(gw.ran, 1);
	assert_int_equal(gw.gate_ok, 1);
	sem_destroy(&w.started);
	for (int i = 0; i < 3; i++)
		sem_destroy(&w.woke[i]);
	sem_destroy(&c.returned);
	gwatch_fini(&gw);
}

/* A running task that waits on its token's fd: only the firer's wake-up
 * (the eventfd write) ends its poll, whatever the timing. */
struct fdtask {
	sem_t      started;
	atomic_int fd_ret;   /* ctp_token_fd's error, or poll's count */
};

static int fdtask_fn(void *arg, ctp_token *tok)
{
	struct fdtask *f = arg;
	int fd = ctp_token_fd(tok);

	tu_sem_post(&f->started);
	if (fd < 0) {
		atomic_store(&f->fd_ret, fd);
	} else {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int n;

		do
			n = poll(&pfd, 1, (int)(2 * BOUND / 1000000));
		while (n < 0 && errno == EINTR);
		atomic_store(&f->fd_ret, n);
	}
	return 7;
}

struct join11 {
	ctp_task  *task;
	atomic_int wait_ret;
	atomic_int status;
};

static void join11_watch(void *arg)
{
	struct join11 *j = arg;
	int st = UNSET;

	atomic_store(&j->wait_ret, ctp_task_wait(j->task, BOUND, &st));
	atomic_store(&j->status, st);
}

/* A group watcher waits for a running task of its group: it must not
 * deadlock (old code: the task was woken only after the watcher, so the
 * wait ran out after BOUND). */
static void test_regress_11_group_watcher_waits_for_running_task(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct fdtask f;
	struct join11 j;
	ctp_token *group = NULL;
	ctp_watch *wg = NULL;

	tu_sem_init(&f.started, 0);
	atomic_init(&f.fd_ret, UNSET);
	memset(&j, 0, sizeof(j));
	atomic_init(&j.wait_ret, UNSET);
	atomic_init(&j.status, UNSET);
	assert_int_equal(ctp_token_create(&group, NULL), 0);
	assert_int_equal(ctp_pool_submit(pool, fdtask_fn, &f,
	                 &(ctp_task_opts){ .parent = group }, &j.task), 0);
	tu_sem_wait(&f.started);
	assert_int_equal(ctp_token_watch(group, join11_watch, &j, &wg), 0);
	int cr = ctp_token_cancel(group);
	int tw = ctp_task_wait(j.task, 3 * BOUND, NULL); /* poll gives up */
	ctp_task_release(j.task);
	ctp_token_unwatch(wg);
	ctp_token_release(group);
	int dr = ctp_pool_destroy(pool);
	assert_int_equal(dr, 0);
	assert_int_equal(cr, 0);
	assert_int_equal(tw, 0);
	assert_int_equal(j.wait_ret, 0);
	assert_int_equal(j.status, 7);
	assert_int_equal(f.fd_ret, 1);
	sem_destroy(&f.started);
}

/* ---- item 12: deadlines never wait behind done callbacks ---------------- */

struct dl12 {
	/* B: running, stops only at its own deadline */
	sem_t           b_started;
	sem_t           b_woke;
	atomic_int      b_ret;
	_Atomic int64_t b_submitted_ns;
	_Atomic int64_t b_woke_ns;
	/* A: timed out while queued; its done waits for B's deadline */
	atomic_int      a_status;
	atomic_int      a_calls;
	atomic_int      a_saw_b;
	char            a_thread_name[32]; /* written before a_back */
	sem_t           a_back;
};

static int dl12_b_fn(void *arg, ctp_token *tok)
{
	struct dl12 *d = arg;

	tu_sem_post(&d->b_started);
	atomic_store(&d->b_ret, ctp_token_sleep(tok, CTP_FOREVER));
	atomic_store(&d->b_woke_ns, tu_now_ns());
	tu_sem_post(&d->b_woke);
	return 0;
}

static void dl12_a_done(void *arg, int status)
{
	struct dl12 *d = arg;

	atomic_store(&d->a_status, status);
	atomic_fetch_add(&d->a_calls, 1);
	if (pthread_getname_np(pthread_self(), d->a_thread_name,
	                       sizeof(d->a_thread_name)) != 0)
		strcpy(d->a_thread_name, "?");
	atomic_store(&d->a_saw_b, sem_wait_for(&d->b_woke, BOUND));
	tu_sem_post(&d->a_back);
}

/*
 * Two workers: one parked, one running B (timeout 100 ms, sleeps until its
 * token fires). A is queued with a 1 ms timeout; its done waits (at most
 * BOUND) for B's deadline to have fired. (Old code: the timer thread ran
 * A's done inline, so B's deadline could not fire until it gave up.)
 */
static void test_regress_12_deadline_not_delayed_by_timed_out_done(
    void **state)
{
	(void)state;
	ctp_pool_opts po = { .threads = 2, .name = "rg12" };
	ctp_pool *pool = NULL;
	struct parked p;
	struct dl12 d;
	ctp_task *tb = NULL;
	int st = UNSET;

	assert_int_equal(ctp_pool_create(&pool, &po), 0);
	parked_init(&p, 0);
	memset(&d, 0, sizeof(d));
	tu_sem_init(&d.b_started, 0);
	tu_sem_init(&d.b_woke, 0);
	tu_sem_init(&d.a_back, 0);
	atomic_init(&d.b_ret, UNSET);
	atomic_init(&d.a_status, UNSET);
	atomic_init(&d.a_saw_b, UNSET);

	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p.started);
	atomic_store(&d.b_submitted_ns, tu_now_ns());
	assert_int_equal(ctp_pool_submit(pool, dl12_b_fn, &d,
	                 &(ctp_task_opts){ .timeout = CTP_MSEC(100) }, &tb), 0);
	tu_sem_wait(&d.b_started);
	/* both workers busy: A stays queued until its deadline */
	assert_int_equal(ctp_pool_submit(pool, noop_fn, &d,
	                 &(ctp_task_opts){ .timeout = CTP_MSEC(1),
	                                   .done = dl12_a_done }, NULL), 0);

	bool a_back = sem_wait_for(&d.a_back, 3 * BOUND);
	int wr = ctp_task_wait(tb, BOUND, &st);
	unpark(&p, 1);
	int ir = ctp_pool_wait_idle(pool, BOUND);
	ctp_stats s = stats_of(pool);
	ctp_task_release(tb);
	int dr = ctp_pool_destroy(pool);
	assert_int_equal(ir, 0);
	assert_int_equal(dr, 0);
	assert_true(a_back);
	assert_int_equal(d.a_calls, 1);
	assert_int_equal(d.a_status, -ETIMEDOUT);
	assert_int_equal(d.a_saw_b, 1); /* B's deadline fired meanwhile */
	assert_int_equal(wr, 0);
	assert_int_equal(d.b_ret, -ETIMEDOUT);
	assert_true(d.b_woke_ns - d.b_submitted_ns < CTP_SEC(5));
	assert_string_equal(d.a_thread_name, "rg12-tcb");
	assert_int_equal(s.timed_out, 1);
	assert_identity(&s);
	sem_destroy(&d.b_started);
	sem_destroy(&d.b_woke);
	sem_destroy(&d.a_back);
	parked_fini(&p);
}

/* ---- item 15: shutdown(pool, 0, 0) of an idle pool ---------------------- */

static void test_regress_15_idle_pool_shutdown_0_0_returns_0(void **state)
{
	(void)state;
	static int failures;
	static tu_threads base;
	int rounds = (int)tu_scaled(200, 20);

	tu_threads_baseline(&base);
	failures = 0;
	for (int i = 0; i < rounds; i++) {
		ctp_pool *pool = pool_new(2, 0);
		int r = ctp_pool_shutdown(pool, 0, 0);

		CHECK(r == 0, "round %d: shutdown(pool, 0, 0) = %d (%s)\n", i,
		      r, ctp_strerror(r));
		if (r == 0)
			CHECK(stats_of(pool).threads == 0, "round %d\n", i);
		assert_int_equal(ctp_pool_destroy(pool), 0);
	}
	int left = threads_gone(&base); /* abandoned ones, if any */
	assert_int_equal(failures, 0);
	assert_int_equal(left, 0);
}

/* The same once tasks have run (and, with_timer, the timer thread has
 * started): idle means nothing ignores its token. */
static void idle_after_work(bool with_timer)
{
	static int failures;
	static tu_threads base;
	int rounds = (int)tu_scaled(50, 10);

	tu_threads_baseline(&base);
	failures = 0;
	for (int i = 0; i < rounds; i++) {
		ctp_pool *pool = pool_new(2, 0);
		ctp_task_opts o = { .timeout = with_timer ? CTP_SEC(30) : 0 };

		for (int k = 0; k < 4; k++)
			assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, &o,
			                 NULL), 0);
		assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
		int r = ctp_pool_shutdown(pool, 0, 0);

		CHECK(r == 0, "round %d: shutdown(pool, 0, 0) = %d (%s)\n", i,
		      r, ctp_strerror(r));
		assert_int_equal(ctp_pool_destroy(pool), 0);
	}
	int left = threads_gone(&base);
	assert_int_equal(failures, 0);
	assert_int_equal(left, 0);
}

static void test_regress_15_idle_after_work_shutdown_0_0_returns_0(
    void **state)
{
	(void)state;
	idle_after_work(false);
}

static void test_regress_15_idle_with_timer_shutdown_0_0_returns_0(
    void **state)
{
	(void)state;
	idle_after_work(true);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_regress_1_shutdown_waits_for_group_cancel_done),
		cmocka_unit_test(test_regress_1_destroy_after_wait_idle_while_firer_in_call),
		cmocka_unit_test(test_regress_2_root_cancel_waits_for_sub_firer),
		cmocka_unit_test(
		    test_regress_2_root_cancel_waits_for_child_task_firer),
		cmocka_unit_test(test_regress_2_cancel_root_from_sub_done_no_self_deadlock),
		cmocka_unit_test(test_regress_4_second_shutdown_waits_for_drop_dones),
		cmocka_unit_test(test_regress_4_second_shutdown_grace0_times_out),
		cmocka_unit_test(test_regress_5_unwatch_after_fire_waits_for_pending_watch),
		cmocka_unit_test(test_regress_5_dones_run_before_user_watchers),
		cmocka_unit_test(test_regress_5_watchers_run_in_registration_order),
		cmocka_unit_test(test_regress_5_unwatch_other_from_watcher_no_self_deadlock),
		cmocka_unit_test(test_regress_10_abandoned_worker_submits_after_destroy),
		cmocka_unit_test(test_regress_10_submitters_during_shutdown0_destroy_loop),
		cmocka_unit_test(test_regress_11_slow_group_watcher_does_not_delay_wakeups),
		cmocka_unit_test(test_regress_11_group_watcher_waits_for_running_task),
		cmocka_unit_test(test_regress_12_deadline_not_delayed_by_timed_out_done),
		cmocka_unit_test(test_regress_15_idle_pool_shutdown_0_0_returns_0),
		cmocka_unit_test(test_regress_15_idle_after_work_shutdown_0_0_returns_0),
		cmocka_unit_test(test_regress_15_idle_with_timer_shutdown_0_0_returns_0),
	};

	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
