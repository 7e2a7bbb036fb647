/*
 * Tests for standalone cancellation tokens: create/cancel/release, reasons,
 * parent/child propagation (never upwards, children born fired), release in
 * any order, ctp_token_sleep, ctp_token_fd, ctp_token_watch/unwatch (once,
 * on the firing thread, at once when already fired, unwatch semantics
 * including from inside fn and while fn runs), one cancel waking a sleeper,
 * an fd poller and a watcher together, and ctp_strerror. A small pool
 * supplies what standalone tokens cannot: deadlines (the timer fires them
 * with nobody checking), the first reason staying, group tokens as task
 * parents (queued tasks never run), and tasks' own tokens.
 *
 * Helper threads never assert: they record results in structs that the test
 * thread checks after joining them. Events are ordered with semaphores; time
 * is only checked as "never early" and as a generous upper bound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctpool.h"
#include "testutil.h"

/* A wait that must end because of a wake-up ends well within this. */
#define PROMPT_NS CTP_SEC(5)
/* Sleeps under test, and how late they may be in a slow (sanitised) run. */
#define SHORT_SLEEP CTP_MSEC(20)
#define LATE_SLACK  CTP_SEC(2)

/* Joins t, aborting after 30 s so a missed wake-up fails instead of hanging. */
static void join_or_abort(pthread_t t)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	if (pthread_timedjoin_np(t, NULL, &ts) != 0) {
		fprintf(stderr, "helper thread still blocked after 30 s\n");
		abort();
	}
}

static ctp_token *new_token(ctp_token *parent)
{
	ctp_token *t = NULL;

	assert_int_equal(ctp_token_create(&t, parent), 0);
	assert_non_null(t);
	return t;
}

/* 1 if fd is readable now (poll with timeout 0), 0 if not, -1 on error. */
static int fd_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int           rc = poll(&p, 1, 0);

	if (rc < 0)
		return -1;
	return rc == 1 && (p.revents & POLLIN) != 0;
}

/* ---- helper threads ----------------------------------------------------- */

/* Cancels a token from its own thread. */
struct canceller {
	ctp_token *token;
	pthread_t  self;
	int        rc;
};

static void *cancel_thread(void *arg)
{
	struct canceller *c = arg;

	c->self = pthread_self();
	c->rc = ctp_token_cancel(c->token);
	return NULL;
}

static pthread_t spawn_canceller(struct canceller *c, ctp_token *token)
{
	c->token = token;
	c->rc = 1;
	return tu_spawn(cancel_thread, c);
}

/* Sleeps on a token. */
struct sleeper {
	ctp_token *token;
	int64_t    ns;
	sem_t      ready; /* posted right before ctp_token_sleep */
	int        rc;
};

static void *sleep_thread(void *arg)
{
	struct sleeper *s = arg;

	tu_sem_post(&s->ready);
	s->rc = ctp_token_sleep(s->token, s->ns);
	return NULL;
}

/* Polls a token's fd with no timeout. */
struct poller {
	int   fd;
	sem_t ready; /* posted right before poll */
	int   rc;
	short revents;
};

static void *poll_thread(void *arg)
{
	struct poller *p = arg;
	struct pollfd  pfd = { .fd = p->fd, .events = POLLIN };

	tu_sem_post(&p->ready);
	p->rc = poll(&pfd, 1, -1);
	p->revents = pfd.revents;
	return NULL;
}

/* A watcher that counts its calls and notes the thread and reason. */
struct watch_rec {
	ctp_token *token;  /* when set, fn reads its reason */
	atomic_int calls;
	atomic_int reason;
	pthread_t  thread; /* the thread fn last ran on */
};

static void watch_rec_init(struct watch_rec *r, ctp_token *token)
{
	r->token = token;
	atomic_init(&r->calls, 0);
	atomic_init(&r->reason, 1);
}

static void count_fn(void *arg)
{
	struct watch_rec *r = arg;

	r->thread = pthread_self();
	if (r->token != NULL)
		atomic_store(&r->reason, ctp_token_reason(r->token));
	atomic_fetch_add(&r->calls, 1);
}

static ctp_watch *watch_rec(ctp_token *t, struct watch_rec *r)
{
	ctp_watch *w = NULL;

	assert_int_equal(ctp_token_watch(t, count_fn, r, &w), 0);
	assert_non_null(w);
	return w;
}

/* ---- create, cancel, reason --------------------------------------------- */

static void test_token_create_cancel_release(void **state)
{
	ctp_token *t = new_token(NULL);

	(void)state;
	assert_false(ctp_token_cancelled(t));
	assert_int_equal(ctp_token_reason(t), 0);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_true(ctp_token_cancelled(t));
	assert_int_equal(ctp_token_reason(t), -ECANCELED);
	ctp_token_release(t);
}

static void test_token_cancel_twice_is_ealready(void **state)
{
	ctp_token *t = new_token(NULL);

	(void)state;
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(ctp_token_cancel(t), -EALREADY);
	assert_int_equal(ctp_token_cancel(t), -EALREADY);
	assert_true(ctp_token_cancelled(t));
	assert_int_equal(ctp_token_reason(t), -ECANCELED);
	ctp_token_release(t);
}

static void test_token_rejects_null(void **state)
{
	ctp_token *t = new_token(NULL);

	(void)state;
	assert_int_equal(ctp_token_create(NULL, NULL), -EINVAL);
	assert_int_equal(ctp_token_create(NULL, t), -EINVAL);
	assert_int_equal(ctp_token_cancel(NULL), -EINVAL);
	assert_int_equal(ctp_token_reason(NULL), -EINVAL);
	assert_int_equal(ctp_token_sleep(NULL, 0), -EINVAL);
	assert_int_equal(ctp_token_sleep(NULL, CTP_MSEC(1)), -EINVAL);
	assert_int_equal(ctp_token_sleep(NULL, CTP_FOREVER), -EINVAL);
	assert_int_equal(ctp_token_fd(NULL), -EINVAL);
	/* None of the failures touched t. */
	assert_int_equal(ctp_token_reason(t), 0);
	ctp_token_release(t);
}

static void test_token_release_and_unwatch_null_are_noops(void **state)
{
	(void)state;
	ctp_token_release(NULL);
	ctp_token_unwatch(NULL);
}

/* ---- parents and children ----------------------------------------------- */

static void test_token_children_fire_with_parent(void **state)
{
	ctp_token *root = new_token(NULL);
	ctp_token *a = new_token(root);
	ctp_token *b = new_token(root);
	ctp_token *grand = new_token(a);

	(void)state;
	assert_false(ctp_token_cancelled(a));
	assert_false(ctp_token_cancelled(grand));
	assert_int_equal(ctp_token_cancel(root), 0);
	assert_true(ctp_token_cancelled(a));
	assert_true(ctp_token_cancelled(b));
	assert_true(ctp_token_cancelled(grand));
	assert_int_equal(ctp_token_reason(a), -ECANCELED);
	assert_int_equal(ctp_token_reason(b), -ECANCELED);
	assert_int_equal(ctp_token_reason(grand), -ECANCELED);
	/* They fired already: their own cancel is too late. */
	assert_int_equal(ctp_token_cancel(a), -EALREADY);
	assert_int_equal(ctp_token_cancel(grand), -EALREADY);
	ctp_token_release(grand);
	ctp_token_release(b);
	ctp_token_release(a);
	ctp_token_release(root);
}

static void test_token_cancel_child_never_fires_parent(void **state)
{
	ctp_token *root = new_token(NULL);
	ctp_token *a = new_token(root);
	ctp_token *b = new_token(root);
	ctp_token *grand = new_token(a);

	(void)state;
	assert_int_equal(ctp_token_cancel(grand), 0);
	assert_false(ctp_token_cancelled(a));
	assert_false(ctp_token_cancelled(root));
	assert_int_equal(ctp_token_cancel(a), 0);
	assert_false(ctp_token_cancelled(root));
	assert_false(ctp_token_cancelled(b)); /* siblings are untouched */
	assert_int_equal(ctp_token_reason(root), 0);
	assert_int_equal(ctp_token_reason(b), 0);
	/* The parent can still be cancelled, and reaches the sibling. */
	assert_int_equal(ctp_token_cancel(root), 0);
	assert_true(ctp_token_cancelled(b));
	assert_int_equal(ctp_token_reason(a), -ECANCELED);
	ctp_token_release(grand);
	ctp_token_release(b);
	ctp_token_release(a);
	ctp_token_release(root);
}

static void test_token_child_of_fired_parent_starts_fired(void **state)
{
	ctp_token *root = new_token(NULL);
	ctp_token *child, *grand;

	(void)state;
	assert_int_equal(ctp_token_cancel(root), 0);
	child = new_token(root);
	grand = new_token(child);
	assert_true(ctp_token_cancelled(child));
	assert_true(ctp_token_cancelled(grand));
	assert_int_equal(ctp_token_reason(child), ctp_token_reason(root));
	assert_int_equal(ctp_token_reason(grand), -ECANCELED);
	assert_int_equal(ctp_token_cancel(child), -EALREADY);
	ctp_token_release(root);
	ctp_token_release(grand);
	ctp_token_release(child);
}

/* ---- release order ------------------------------------------------------ */

static void test_token_release_parent_before_child(void **state)
{
	ctp_token *parent = new_token(NULL);
	ctp_token *child = new_token(parent);

	(void)state;
	ctp_token_release(parent);
	/* The child still works on its own. */
	assert_false(ctp_token_cancelled(child));
	assert_int_equal(ctp_token_reason(child), 0);
	assert_int_equal(ctp_token_sleep(child, 0), 0);
	assert_int_equal(ctp_token_cancel(child), 0);
	assert_int_equal(ctp_token_reason(child), -ECANCELED);
	ctp_token_release(child);
}

static void test_token_release_child_before_parent(void **state)
{
	ctp_token *parent = new_token(NULL);
	ctp_token *child = new_token(parent);
	ctp_token *other = new_token(parent);

	(void)state;
	ctp_token_release(child);
	/* Cancelling reaches the live child and does not touch the freed one. */
	assert_int_equal(ctp_token_cancel(parent), 0);
	assert_true(ctp_token_cancelled(other));
	ctp_token_release(other);
	ctp_token_release(parent);
}

static void test_token_cancel_reaches_through_released_middle(void **state)
{
	ctp_token *root = new_token(NULL);
	ctp_token *mid = new_token(root);
	ctp_token *leaf = new_token(mid);
	struct watch_rec rec;
	ctp_watch *w;

	(void)state;
	watch_rec_init(&rec, leaf);
	w = watch_rec(leaf, &rec);
	/* mid is only referred to by leaf now, yet stays in the tree. */
	ctp_token_release(mid);
	assert_int_equal(ctp_token_cancel(root), 0);
	assert_true(ctp_token_cancelled(leaf));
	assert_int_equal(ctp_token_reason(leaf), -ECANCELED);
	assert_int_equal(atomic_load(&rec.calls), 1);
	ctp_token_unwatch(w);
	ctp_token_release(root);
	ctp_token_release(leaf);
}

/* ---- sleep -------------------------------------------------------------- */

static void test_token_sleep_returns_zero_after_time(void **state)
{
	ctp_token *t = new_token(NULL);
	int64_t    start, elapsed;
	int        rc;

	(void)state;
	start = tu_now_ns();
	rc = ctp_token_sleep(t, SHORT_SLEEP);
	elapsed = tu_now_ns() - start;
	assert_int_equal(rc, 0);
	assert_true(elapsed >= SHORT_SLEEP);             /* never early */
	assert_true(elapsed < SHORT_SLEEP + LATE_SLACK);
	ctp_token_release(t);
}

static void test_token_sleep_zero_does_not_block(void **state)
{
	ctp_token *t = new_token(NULL);
	int64_t    start = tu_now_ns();

	(void)state;
	assert_int_equal(ctp_token_sleep(t, 0), 0);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(ctp_token_sleep(t, 0), -ECANCELED);
	assert_true(tu_now_ns() - start < PROMPT_NS);
	ctp_token_release(t);
}

static void test_token_sleep_fired_returns_at_once(void **state)
{
	ctp_token *parent = new_token(NULL);
	ctp_token *child = new_token(parent);
	int64_t    start;

	(void)state;
	assert_int_equal(ctp_token_cancel(parent), 0);
	start = tu_now_ns();
	assert_int_equal(ctp_token_sleep(parent, CTP_SEC(30)), -ECANCELED);
	assert_int_equal(ctp_token_sleep(child, CTP_SEC(30)), -ECANCELED);
	assert_int_equal(ctp_token_sleep(child, INT64_MAX), -ECANCELED);
	assert_true(tu_now_ns() - start < PROMPT_NS);
	ctp_token_release(child);
	ctp_token_release(parent);
}

static void test_token_sleep_rejects_bad_durations(void **state)
{
	static const int64_t bad[] = { -2, -1000, CTP_MSEC(-20), INT64_MIN };
	ctp_token *t = new_token(NULL);
	size_t     i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(ctp_token_sleep(t, bad[i]), -EINVAL);
	assert_int_equal(ctp_token_reason(t), 0);
	ctp_token_release(t);
}

/* Fires the token while another thread sleeps on it for ns. */
static void check_sleep_woken(int64_t ns, bool via_parent)
{
	ctp_token     *parent = new_token(NULL);
	ctp_token     *t = new_token(parent);
	struct sleeper s = { .token = t, .ns = ns, .rc = 1 };
	pthread_t      th;
	int64_t        fired;

	tu_sem_init(&s.ready, 0);
	th = tu_spawn(sleep_thread, &s);
	tu_sem_wait(&s.ready);
	fired = tu_now_ns();
	assert_int_equal(ctp_token_cancel(via_parent ? parent : t), 0);
	join_or_abort(th);
	assert_true(tu_now_ns() - fired < PROMPT_NS);
	assert_int_equal(s.rc, -ECANCELED);
	sem_destroy(&s.ready);
	ctp_token_release(t);
	ctp_token_release(parent);
}

static void test_token_sleep_woken_by_cancel(void **state)
{
	(void)state;
	check_sleep_woken(CTP_SEC(30), false);
}

static void test_token_sleep_forever_woken_by_cancel(void **state)
{
	(void)state;
	check_sleep_woken(CTP_FOREVER, false);
}

static void test_token_sleep_huge_woken_by_cancel(void **state)
{
	(void)state;
	/* INT64_MAX must not overflow into a deadline in the past. */
	check_sleep_woken(INT64_MAX, false);
}

static void test_token_sleep_woken_by_parent_cancel(void **state)
{
	(void)state;
	check_sleep_woken(CTP_FOREVER, true);
}

/* ---- fd ----------------------------------------------------------------- */

static void test_token_fd_readable_only_after_fire(void **state)
{
	ctp_token *t = new_token(NULL);
	int        fd;

	(void)state;
	fd = ctp_token_fd(t);
	assert_true(fd >= 0);
	assert_int_equal(ctp_token_fd(t), fd);
	assert_int_equal(fd_readable(fd), 0);
	assert_int_equal(fd_readable(fd), 0);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(fd_readable(fd), 1);
	/* It stays readable: nobody reads it. */
	assert_int_equal(fd_readable(fd), 1);
	assert_int_equal(ctp_token_fd(t), fd);
	assert_int_equal(ctp_token_cancel(t), -EALREADY);
	assert_int_equal(fd_readable(fd), 1);
	ctp_token_release(t);
}

static void test_token_fd_made_after_fire_is_readable(void **state)
{
	ctp_token *t = new_token(NULL);
	ctp_token *child;
	int        fd;

	(void)state;
	assert_int_equal(ctp_token_cancel(t), 0);
	fd = ctp_token_fd(t);
	assert_true(fd >= 0);
	assert_int_equal(fd_readable(fd), 1);
	assert_int_equal(fd_readable(fd), 1);
	/* Also for a child born fired. */
	child = new_token(t);
	fd = ctp_token_fd(child);
	assert_true(fd >= 0);
	assert_int_equal(fd_readable(fd), 1);
	ctp_token_release(child);
	ctp_token_release(t);
}

static void test_token_fd_readable_when_parent_cancelled(void **state)
{
	ctp_token *parent = new_token(NULL);
	ctp_token *child = new_token(parent);
	ctp_token *grand = new_token(child);
	int        fd_child = ctp_token_fd(child);
	int        fd_grand = ctp_token_fd(grand);

	(void)state;
	assert_true(fd_child >= 0);
	assert_true(fd_grand >= 0);
	assert_int_not_equal(fd_child, fd_grand);
	assert_int_equal(fd_readable(fd_child), 0);
	assert_int_equal(ctp_token_cancel(parent), 0);
	assert_int_equal(fd_readable(fd_child), 1);
	assert_int_equal(fd_readable(fd_grand), 1);
	ctp_token_release(grand);
	ctp_token_release(child);
	ctp_token_release(parent);
}

static void test_token_fd_wakes_blocked_poll(void **state)
{
	ctp_token    *t = new_token(NULL);
	struct poller p = { .rc = -2 };
	pthread_t     th;
	int64_t       fired;

	(void)state;
	p.fd = ctp_token_fd(t);
	assert_true(p.fd >= 0);
	tu_sem_init(&p.ready, 0);
	th = tu_spawn(poll_thread, &p);
	tu_sem_wait(&p.ready);
	fired = tu_now_ns();
	assert_int_equal(ctp_token_cancel(t), 0);
	join_or_abort(th);
	assert_true(tu_now_ns() - fired < PROMPT_NS);
	assert_int_equal(p.rc, 1);
	assert_true(p.revents & POLLIN);
	assert_int_equal(fd_readable(p.fd), 1);
	sem_destroy(&p.ready);
	ctp_token_release(t);
}

/* ---- watch -------------------------------------------------------------- */

static void test_token_watch_runs_once_on_firing_thread(void **state)
{
	ctp_token       *parent = new_token(NULL);
	ctp_token       *t = new_token(parent);
	struct watch_rec rec;
	struct canceller c;
	ctp_watch       *w;
	pthread_t        th;

	(void)state;
	watch_rec_init(&rec, t);
	w = watch_rec(t, &rec);
	assert_int_equal(atomic_load(&rec.calls), 0);
	th = spawn_canceller(&c, t);
	join_or_abort(th);
	assert_int_equal(c.rc, 0);
	assert_int_equal(atomic_load(&rec.calls), 1);
	assert_true(pthread_equal(rec.thread, c.self));
	/* fn ran after the token fired: it saw the reason. */
	assert_int_equal(atomic_load(&rec.reason), -ECANCELED);
	/* Later cancels, direct or through the parent, do not run it again. */
	assert_int_equal(ctp_token_cancel(t), -EALREADY);
	assert_int_equal(ctp_token_cancel(parent), 0);
	assert_int_equal(atomic_load(&rec.calls), 1);
	ctp_token_unwatch(w);
	assert_int_equal(atomic_load(&rec.calls), 1);
	ctp_token_release(t);
	ctp_token_release(parent);
}

static void test_token_watch_fired_runs_at_once_on_caller(void **state)
{
	ctp_token       *t = new_token(NULL);
	struct watch_rec rec;
	ctp_watch       *w;

	(void)state;
	watch_rec_init(&rec, t);
	assert_int_equal(ctp_token_cancel(t), 0);
	w = watch_rec(t, &rec);
	/* It ran inside ctp_token_watch, on this thread. */
	assert_int_equal(atomic_load(&rec.calls), 1);
	assert_true(pthread_equal(rec.thread, pthread_self()));
	assert_int_equal(atomic_load(&rec.reason), -ECANCELED);
	ctp_token_unwatch(w);
	assert_int_equal(atomic_load(&rec.calls), 1);
	ctp_token_release(t);
}

static void test_token_unwatch_before_fire_never_runs(void **state)
{
	ctp_token       *t = new_token(NULL);
	struct watch_rec rec;
	ctp_watch       *w;

	(void)state;
	watch_rec_init(&rec, NULL);
	w = watch_rec(t, &rec);
	ctp_token_unwatch(w);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(atomic_load(&rec.calls), 0);
	ctp_token_release(t);
}

static void test_token_watch_many_watchers_all_run(void **state)
{
	enum { N = 16 };
	ctp_token       *t = new_token(NULL);
	struct watch_rec rec[N];
	ctp_watch       *w[N];
	int              i;

	(void)state;
	for (i = 0; i < N; i++) {
		watch_rec_init(&rec[i], NULL);
		w[i] = watch_rec(t, &rec[i]);
	}
	/* One unwatched before firing must not run; the rest must. */
	ctp_token_unwatch(w[5]);
	assert_int_equal(ctp_token_cancel(t), 0);
	for (i = 0; i < N; i++) {
		assert_int_equal(atomic_load(&rec[i].calls), i == 5 ? 0 : 1);
		if (i != 5) {
			assert_true(pthread_equal(rec[i].thread, pthread_self()));
			ctp_token_unwatch(w[i]);
		}
	}
	ctp_token_release(t);
}

static void test_token_watch_children_run_when_parent_cancelled(void **state)
{
	ctp_token       *root = new_token(NULL);
	ctp_token       *child = new_token(root);
	ctp_token       *grand = new_token(child);
	struct watch_rec rc, rg;
	struct canceller c;
	ctp_watch       *wc, *wg;
	pthread_t        th;

	(void)state;
	watch_rec_init(&rc, child);
	watch_rec_init(&rg, grand);
	wc = watch_rec(child, &rc);
	wg = watch_rec(grand, &rg);
	th = spawn_canceller(&c, root);
	join_or_abort(th);
	assert_int_equal(c.rc, 0);
	assert_int_equal(atomic_load(&rc.calls), 1);
	assert_int_equal(atomic_load(&rg.calls), 1);
	/* The thread that cancelled the root is the one that fired them. */
	assert_true(pthread_equal(rc.thread, c.self));
	assert_true(pthread_equal(rg.thread, c.self));
	assert_int_equal(atomic_load(&rc.reason), -ECANCELED);
	assert_int_equal(atomic_load(&rg.reason), -ECANCELED);
	ctp_token_unwatch(wg);
	ctp_token_unwatch(wc);
	ctp_token_release(grand);
	ctp_token_release(child);
	ctp_token_release(root);
}

static void test_token_watch_rejects_null(void **state)
{
	ctp_token       *t = new_token(NULL);
	struct watch_rec rec;
	ctp_watch       *w = NULL;

	(void)state;
	watch_rec_init(&rec, NULL);
	assert_int_equal(ctp_token_watch(NULL, count_fn, &rec, &w), -EINVAL);
	assert_int_equal(ctp_token_watch(t, NULL, &rec, &w), -EINVAL);
	assert_int_equal(ctp_token_watch(t, count_fn, &rec, NULL), -EINVAL);
	/* Failed calls registered nothing. */
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(atomic_load(&rec.calls), 0);
	/* Not even on a fired token. */
	assert_int_equal(ctp_token_watch(t, count_fn, &rec, NULL), -EINVAL);
	assert_int_equal(atomic_load(&rec.calls), 0);
	ctp_token_release(t);
}

/* fn calls back into the library: it must run outside every lock. */
struct reentrant {
	ctp_token *token;
	int        reason;
	int        cancel_rc;
	int        create_rc;
	int        child_reason;
	atomic_int calls;
};

static void reentrant_fn(void *arg)
{
	struct reentrant *r = arg;
	ctp_token        *child = NULL;

	r->reason = ctp_token_reason(r->token);
	r->cancel_rc = ctp_token_cancel(r->token);
	r->create_rc = ctp_token_create(&child, r->token);
	if (r->create_rc == 0) {
		r->child_reason = ctp_token_reason(child);
		ctp_token_release(child);
	}
	atomic_fetch_add(&r->calls, 1);
}

static void test_token_watch_fn_may_call_library(void **state)
{
	ctp_token       *t = new_token(NULL);
	struct reentrant r = { .token = t, .reason = 1, .cancel_rc = 1,
	                       .create_rc = 1, .child_reason = 1 };
	struct canceller c;
	ctp_watch       *w = NULL;
	pthread_t        th;

	(void)state;
	atomic_init(&r.calls, 0);
	assert_int_equal(ctp_token_watch(t, reentrant_fn, &r, &w), 0);
	th = spawn_canceller(&c, t);
	join_or_abort(th);
	assert_int_equal(c.rc, 0);
	assert_int_equal(atomic_load(&r.calls), 1);
	assert_int_equal(r.reason, -ECANCELED);
	assert_int_equal(r.cancel_rc, -EALREADY);
	assert_int_equal(r.create_rc, 0);
	assert_int_equal(r.child_reason, -ECANCELED);
	ctp_token_unwatch(w);
	ctp_token_release(t);
}

/* fn unwatches its own watch. */
struct self_unwatch {
	ctp_watch *watch;
	atomic_int calls;
	atomic_int unwatch_returned;
};

static void self_unwatch_fn(void *arg)
{
	struct self_unwatch *s = arg;

	ctp_token_unwatch(s->watch);
	atomic_store(&s->unwatch_returned, 1);
	atomic_fetch_add(&s->calls, 1);
}

static void test_token_unwatch_inside_fn_does_not_wait(void **state)
{
	ctp_token          *t = new_token(NULL);
	struct self_unwatch s;
	struct canceller    c;
	pthread_t           th;

	(void)state;
	atomic_init(&s.calls, 0);
	atomic_init(&s.unwatch_returned, 0);
	assert_int_equal(ctp_token_watch(t, self_unwatch_fn, &s, &s.watch), 0);
	/* Fire from a helper so a deadlock aborts instead of hanging. */
	th = spawn_canceller(&c, t);
	join_or_abort(th);
	assert_int_equal(c.rc, 0);
	assert_int_equal(atomic_load(&s.calls), 1);
	assert_int_equal(atomic_load(&s.unwatch_returned), 1);
	/* The watch was given back inside fn: no second unwatch. */
	ctp_token_release(t);
}

/* fn blocks until released; another thread unwatches meanwhile. */
struct blocking_watch {
	ctp_watch *watch;
	sem_t      in_fn;            /* fn has started */
	sem_t      let_fn_go;        /* the test lets fn finish */
	sem_t      unwatch_starting; /* posted right before ctp_token_unwatch */
	atomic_int fn_finished;
	atomic_int unwatch_returned;
	int        unwatch_done_before_fn_ended; /* seen by fn */
	int        fn_done_when_unwatch_returned; /* seen by the unwatcher */
};

static void blocking_fn(void *arg)
{
	struct blocking_watch *b = arg;

	tu_sem_post(&b->in_fn);
	tu_sem_wait(&b->let_fn_go);
	b->unwatch_done_before_fn_ended = atomic_load(&b->unwatch_returned);
	atomic_store(&b->fn_finished, 1);
}

static void *unwatch_thread(void *arg)
{
	struct blocking_watch *b = arg;

	tu_sem_post(&b->unwatch_starting);
	ctp_token_unwatch(b->watch);
	b->fn_done_when_unwatch_returned = atomic_load(&b->fn_finished);
	atomic_store(&b->unwatch_returned, 1);
	return NULL;
}

static void test_token_unwatch_waits_for_running_fn(void **state)
{
	ctp_token            *t = new_token(NULL);
	struct blocking_watch b = { .unwatch_done_before_fn_ended = -1,
	                            .fn_done_when_unwatch_returned = -1 };
	struct canceller      c;
	pthread_t             tc, tu;

	(void)state;
	tu_sem_init(&b.in_fn, 0);
	tu_sem_init(&b.let_fn_go, 0);
	tu_sem_init(&b.unwatch_starting, 0);
	atomic_init(&b.fn_finished, 0);
	atomic_init(&b.unwatch_returned, 0);
	assert_int_equal(ctp_token_watch(t, blocking_fn, &b, &b.watch), 0);

	tc = spawn_canceller(&c, t);
	tu_sem_wait(&b.in_fn);          /* fn is running on the canceller */
	tu = tu_spawn(unwatch_thread, &b);
	tu_sem_wait(&b.unwatch_starting);
	tu_sem_post(&b.let_fn_go);
	join_or_abort(tu);
	join_or_abort(tc);

	assert_int_equal(c.rc, 0);
	assert_int_equal(b.unwatch_done_before_fn_ended, 0);
	assert_int_equal(b.fn_done_when_unwatch_returned, 1);
	sem_destroy(&b.in_fn);
	sem_destroy(&b.let_fn_go);
	sem_destroy(&b.unwatch_starting);
	ctp_token_release(t);
}

/* ---- one cancel wakes every kind of waiter ------------------------------ */

static void test_token_cancel_wakes_sleeper_poller_and_watcher(void **state)
{
	ctp_token       *t = new_token(NULL);
	struct sleeper   s = { .token = t, .ns = CTP_FOREVER, .rc = 1 };
	struct poller    p = { .rc = -2 };
	struct watch_rec rec;
	ctp_watch       *w;
	pthread_t        ts, tp;
	int64_t          fired;

	(void)state;
	watch_rec_init(&rec, t);
	w = watch_rec(t, &rec);
	p.fd = ctp_token_fd(t);
	assert_true(p.fd >= 0);
	tu_sem_init(&s.ready, 0);
	tu_sem_init(&p.ready, 0);
	ts = tu_spawn(sleep_thread, &s);
	tp = tu_spawn(poll_thread, &p);
	tu_sem_wait(&s.ready);
	tu_sem_wait(&p.ready);

	fired = tu_now_ns();
	assert_int_equal(ctp_token_cancel(t), 0);
	join_or_abort(ts);
	join_or_abort(tp);
	assert_true(tu_now_ns() - fired < PROMPT_NS);
	assert_int_equal(s.rc, -ECANCELED);
	assert_int_equal(p.rc, 1);
	assert_true(p.revents & POLLIN);
	assert_int_equal(atomic_load(&rec.calls), 1);
	assert_true(pthread_equal(rec.thread, pthread_self()));

	ctp_token_unwatch(w);
	sem_destroy(&s.ready);
	sem_destroy(&p.ready);
	ctp_token_release(t);
}

/* ---- tokens of tasks (a pool supplies deadlines and task tokens) -------- */

#define DEADLINE CTP_MSEC(50)

static ctp_pool *new_pool(unsigned threads)
{
	ctp_pool_opts o = { .threads = threads, .name = "tk" };
	ctp_pool     *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	assert_non_null(pool);
	return pool;
}

static ctp_task *submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                        int64_t timeout, ctp_token *parent)
{
	ctp_task_opts o = { .timeout = timeout, .parent = parent };
	ctp_task     *task = NULL;

	assert_int_equal(ctp_pool_submit(pool, fn, arg, &o, &task), 0);
	assert_non_null(task);
	return task;
}

/* Waits for a task that must finish, and returns its status. */
static int finish(ctp_task *task)
{
	int status = 0x7eadbeef;

	assert_int_equal(ctp_task_wait(task, CTP_SEC(30), &status), 0);
	ctp_task_release(task);
	return status;
}

/* A task that parks its worker until the test opens the gate. */
struct gate {
	sem_t started;
	sem_t open;
};

static int gate_fn(void *arg, ctp_token *token)
{
	struct gate *g = arg;

	(void)token;
	tu_sem_post(&g->started);
	tu_sem_wait(&g->open);
	return 0;
}

/* A task that sleeps on its own token until it fires. */
struct sleepy {
	ctp_token *token;   /* the task's token, valid while fn runs */
	sem_t      started; /* posted right before the sleep */
	int        rc;
	int64_t    woke_ns;
};

static int sleepy_fn(void *arg, ctp_token *token)
{
	struct sleepy *s = arg;

	s->token = token;
	tu_sem_post(&s->started);
	s->rc = ctp_token_sleep(token, CTP_FOREVER);
	s->woke_ns = tu_now_ns();
	return s->rc;
}

static void test_token_deadline_wakes_sleeper(void **state)
{
	ctp_pool     *pool = new_pool(1);
	struct sleepy s = { .rc = 1 };
	ctp_task     *task;
	int64_t       start;

	(void)state;
	tu_sem_init(&s.started, 0);
	start = tu_now_ns();
	task = submit(pool, sleepy_fn, &s, DEADLINE, NULL);
	assert_int_equal(finish(task), -ETIMEDOUT);
	assert_int_equal(s.rc, -ETIMEDOUT);
	assert_true(s.woke_ns - start >= DEADLINE);      /* not early */
	assert_true(s.woke_ns - start < DEADLINE + PROMPT_NS);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&s.started);
}

/* Only poll() on the fd: nobody calls into the library until it fires. */
struct deadline_poll {
	struct watch_rec rec;
	pthread_t        worker;
	int              poll_rc;
	short            revents;
	int              reason;
	int64_t          woke_ns;
	char             watcher_name[16];
	sem_t            watched; /* posted by the watcher */
};

static void named_watch_fn(void *arg)
{
	struct deadline_poll *d = arg;

	pthread_getname_np(pthread_self(), d->watcher_name,
	                   sizeof(d->watcher_name));
	count_fn(&d->rec);
	tu_sem_post(&d->watched);
}

static int deadline_poll_fn(void *arg, ctp_token *token)
{
	struct deadline_poll *d = arg;
	struct pollfd         p = { .fd = ctp_token_fd(token), .events = POLLIN };
	ctp_watch            *w = NULL;

	d->worker = pthread_self();
	d->rec.token = token;
	if (p.fd < 0 || ctp_token_watch(token, named_watch_fn, d, &w) != 0)
		return -1;
	d->poll_rc = poll(&p, 1, -1);
	d->woke_ns = tu_now_ns();
	d->revents = p.revents;
	d->reason = ctp_token_reason(token);
	/* The fd may wake us before the timer reaches the watcher; an unwatch
	 * now could rightly cancel it. Let it run first. */
	tu_sem_wait(&d->watched);
	ctp_token_unwatch(w);
	return 0;
}

static void test_token_deadline_wakes_poller_and_watcher(void **state)
{
	ctp_pool            *pool = new_pool(1);
	struct deadline_poll d = { .poll_rc = -2, .reason = 1 };
	ctp_task            *task;
	int64_t              start;

	(void)state;
	watch_rec_init(&d.rec, NULL);
	tu_sem_init(&d.watched, 0);
	start = tu_now_ns();
	task = submit(pool, deadline_poll_fn, &d, CTP_MSEC(200), NULL);
	assert_int_equal(finish(task), 0);
	assert_int_equal(d.poll_rc, 1);
	assert_true(d.revents & POLLIN);
	assert_true(d.woke_ns - start >= CTP_MSEC(200));
	assert_true(d.woke_ns - start < CTP_MSEC(200) + PROMPT_NS);
	assert_int_equal(d.reason, -ETIMEDOUT);
	assert_int_equal(atomic_load(&d.rec.calls), 1);
	assert_int_equal(atomic_load(&d.rec.reason), -ETIMEDOUT);
	/* The timer fired it, so the watcher ran on its callback thread; unless the deadline
	 * had passed before the watch was made (then it ran at once). */
	if (!pthread_equal(d.rec.thread, d.worker))
		assert_string_equal(d.watcher_name, "tk-tcb");
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&d.watched);
}

/* The first reason stays: a deadline, then a parent cancel. */
struct first_reason {
	sem_t      timed_out; /* fn saw its deadline */
	sem_t      go_on;     /* the test cancelled the parent */
	int        sleep_rc;
	int        cancel_rc;
	int        reason_after;
	int        child_reason;
};

static int first_reason_fn(void *arg, ctp_token *token)
{
	struct first_reason *f = arg;
	ctp_token           *child = NULL;

	if (ctp_token_create(&child, token) != 0)
		return -1;
	f->sleep_rc = ctp_token_sleep(token, CTP_FOREVER);
	tu_sem_post(&f->timed_out);
	tu_sem_wait(&f->go_on);
	f->cancel_rc = ctp_token_cancel(token);
	f->reason_after = ctp_token_reason(token);
	f->child_reason = ctp_token_sleep(child, CTP_SEC(30));
	ctp_token_release(child);
	return 0;
}

static void test_token_first_reason_stays(void **state)
{
	ctp_pool           *pool = new_pool(1);
	ctp_token          *group = new_token(NULL);
	struct first_reason f = { .sleep_rc = 1, .cancel_rc = 1 };
	ctp_task           *task;

	(void)state;
	tu_sem_init(&f.timed_out, 0);
	tu_sem_init(&f.go_on, 0);
	task = submit(pool, first_reason_fn, &f, DEADLINE, group);
	tu_sem_wait(&f.timed_out);
	assert_int_equal(ctp_token_cancel(group), 0);
	tu_sem_post(&f.go_on);
	assert_int_equal(finish(task), 0);
	assert_int_equal(f.sleep_rc, -ETIMEDOUT);
	assert_int_equal(f.cancel_rc, -EALREADY);
	assert_int_equal(f.reason_after, -ETIMEDOUT);
	assert_int_equal(f.child_reason, -ETIMEDOUT);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_token_release(group);
	sem_destroy(&f.timed_out);
	sem_destroy(&f.go_on);
}

/* Queued tasks under a group: counted, never run. */
struct group_count {
	atomic_int ran;
	atomic_int done_calls;
	atomic_int done_cancelled;
	atomic_int done_off_thread; /* done ran on another thread than main */
	pthread_t  main_thread;
};

static int count_task_fn(void *arg, ctp_token *token)
{
	struct group_count *g = arg;

	(void)token;
	atomic_fetch_add(&g->ran, 1);
	return 0;
}

static void count_done_fn(void *arg, int status)
{
	struct group_count *g = arg;

	if (status == -ECANCELED)
		atomic_fetch_add(&g->done_cancelled, 1);
	if (!pthread_equal(pthread_self(), g->main_thread))
		atomic_fetch_add(&g->done_off_thread, 1);
	atomic_fetch_add(&g->done_calls, 1);
}

#define GROUP_QUEUED  12
#define GROUP_FILLERS 32

static void yield_fn(void *arg)
{
	(void)arg;
	sched_yield();
}

/* Watched children of the group: firing them takes the canceller a while. */
static void add_fillers(ctp_token *group, ctp_token **tok, ctp_watch **w)
{
	int i;

	for (i = 0; i < GROUP_FILLERS; i++) {
		tok[i] = new_token(group);
		assert_int_equal(ctp_token_watch(tok[i], yield_fn, NULL, &w[i]), 0);
	}
}

static void drop_fillers(ctp_token **tok, ctp_watch **w)
{
	int i;

	for (i = 0; i < GROUP_FILLERS; i++) {
		ctp_token_unwatch(w[i]);
		ctp_token_release(tok[i]);
	}
}

static void test_token_group_cancel_fires_every_task(void **state)
{
	ctp_pool          *pool = new_pool(2);
	ctp_token         *group = new_token(NULL);
	ctp_token         *sub[2];
	ctp_token         *fill[2][GROUP_FILLERS];
	ctp_watch         *fillw[2][GROUP_FILLERS];
	struct sleepy      running = { .rc = 1 };
	struct gate        g;
	struct group_count c = { .main_thread = pthread_self() };
	ctp_task_opts      o = { .done = count_done_fn };
	ctp_task          *tr, *tg, *tq[GROUP_QUEUED];
	int                done_calls, done_cancelled, done_off_thread;
	int                state_cancelled = 0, status_cancelled = 0;
	int                i, sub_fired, tr_status, late_submit;

	(void)state;
	tu_sem_init(&running.started, 0);
	tu_sem_init(&g.started, 0);
	tu_sem_init(&g.open, 0);
	/* Children of the group in this order: sub[0], fillers, the running
	 * task's token, fillers, sub[1]. Whatever order the library fires
	 * them in, a sub-group comes some time after the running task, whose
	 * worker the cancel frees: if the tree is not fired as a whole, that
	 * worker may start a queued task of the sub-group meanwhile. */
	sub[0] = new_token(group);
	add_fillers(group, fill[0], fillw[0]);
	/* One worker runs a task of the group, the other is parked. */
	tr = submit(pool, sleepy_fn, &running, 0, group);
	tu_sem_wait(&running.started);
	add_fillers(group, fill[1], fillw[1]);
	sub[1] = new_token(group);
	tg = submit(pool, gate_fn, &g, 0, NULL);
	tu_sem_wait(&g.started);
	/* These stay queued, under the group and under its two children. */
	for (i = 0; i < GROUP_QUEUED; i++) {
		o.parent = i % 3 == 0 ? group : sub[i % 3 - 1];
		assert_int_equal(ctp_pool_submit(pool, count_task_fn, &c, &o,
		                                 &tq[i]), 0);
	}

	assert_int_equal(ctp_token_cancel(group), 0);
	/* Snapshot now, check after cleaning up (a failure leaves no thread
	 * parked). */
	done_calls = atomic_load(&c.done_calls);
	done_cancelled = atomic_load(&c.done_cancelled);
	done_off_thread = atomic_load(&c.done_off_thread);
	sub_fired = ctp_token_cancelled(sub[0]) && ctp_token_cancelled(sub[1]);
	for (i = 0; i < GROUP_QUEUED; i++) {
		state_cancelled += ctp_task_state(tq[i]) == CTP_TASK_CANCELLED;
		status_cancelled += finish(tq[i]) == -ECANCELED;
	}
	tr_status = finish(tr);
	o.parent = group;
	late_submit = ctp_pool_submit(pool, count_task_fn, &c, &o, NULL);
	tu_sem_post(&g.open);
	assert_int_equal(finish(tg), 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);

	/* Every queued done has returned, on this thread, before the return. */
	assert_int_equal(done_calls, GROUP_QUEUED);
	assert_int_equal(done_cancelled, GROUP_QUEUED);
	assert_int_equal(done_off_thread, 0);
	assert_true(sub_fired);
	assert_int_equal(state_cancelled, GROUP_QUEUED);
	assert_int_equal(status_cancelled, GROUP_QUEUED);
	assert_int_equal(atomic_load(&c.ran), 0);
	/* The running task's token fired. */
	assert_int_equal(tr_status, -ECANCELED);
	/* A fired group refuses new tasks with its reason. */
	assert_int_equal(late_submit, -ECANCELED);
	assert_int_equal(atomic_load(&c.done_calls), GROUP_QUEUED);

	drop_fillers(fill[0], fillw[0]);
	drop_fillers(fill[1], fillw[1]);
	ctp_token_release(sub[0]);
	ctp_token_release(sub[1]);
	ctp_token_release(group);
	sem_destroy(&running.started);
	sem_destroy(&g.started);
	sem_destroy(&g.open);
}

static void test_token_group_released_while_tasks_refer(void **state)
{
	ctp_pool          *pool = new_pool(1);
	ctp_token         *group = new_token(NULL);
	struct gate        g;
	struct group_count c = { .main_thread = pthread_self() };
	ctp_task          *tg, *tq[3];
	int                i;

	(void)state;
	tu_sem_init(&g.started, 0);
	tu_sem_init(&g.open, 0);
	tg = submit(pool, gate_fn, &g, 0, NULL);
	tu_sem_wait(&g.started);
	for (i = 0; i < 3; i++)
		tq[i] = submit(pool, count_task_fn, &c, 0, group);
	/* The queued tasks keep the group alive. */
	ctp_token_release(group);
	tu_sem_post(&g.open);
	assert_int_equal(finish(tg), 0);
	for (i = 0; i < 3; i++)
		assert_int_equal(finish(tq[i]), 0);
	assert_int_equal(atomic_load(&c.ran), 3);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&g.started);
	sem_destroy(&g.open);
}

/* A group's firer takes the tasks it catches queued out of the group's
 * children, with their references on it, so the group (and a child token
 * between) can be freed while those tasks' handles are still held: their
 * cancel, state, wait and release must not touch it (ASan would see a
 * use after free; a reference dropped twice trips the refcount assertion
 * of the debug builds). A running task of the group stays a child until
 * it finishes. */
#define UNLISTED 6

static void test_token_group_freed_before_its_cancelled_tasks(void **state)
{
	ctp_pool          *pool = new_pool(2);
	ctp_token         *group = new_token(NULL);
	ctp_token         *sub = new_token(group);
	struct sleepy      running = { .rc = 1 };
	struct gate        g;
	struct group_count c = { .main_thread = pthread_self() };
	ctp_task_opts      o = { .done = count_done_fn };
	ctp_task          *tr, *tg, *tq[UNLISTED];
	int                i, cancelled_state = 0, again = 0, status = 0;

	(void)state;
	tu_sem_init(&running.started, 0);
	tu_sem_init(&g.started, 0);
	tu_sem_init(&g.open, 0);
	tr = submit(pool, sleepy_fn, &running, 0, group);
	tu_sem_wait(&running.started);
	tg = submit(pool, gate_fn, &g, 0, NULL);
	tu_sem_wait(&g.started);
	for (i = 0; i < UNLISTED; i++) {
		o.parent = i % 2 == 0 ? group : sub;
		assert_int_equal(ctp_pool_submit(pool, count_task_fn, &c, &o,
		                                 &tq[i]), 0);
	}
	assert_int_equal(ctp_token_cancel(group), 0);
	assert_int_equal(atomic_load(&c.done_cancelled), UNLISTED);
	/* The tokens go; the running task's end takes the group's last
	 * reference (finish waits for its done, its worker then drops it). */
	ctp_token_release(sub);
	ctp_token_release(group);
	assert_int_equal(finish(tr), -ECANCELED);
	for (i = 0; i < UNLISTED; i++) {
		cancelled_state += ctp_task_state(tq[i]) == CTP_TASK_CANCELLED;
		again += ctp_task_cancel(tq[i]) == -EALREADY;
		status += finish(tq[i]) == -ECANCELED;
	}
	tu_sem_post(&g.open);
	status += finish(tg) == 0;
	assert_int_equal(ctp_pool_destroy(pool), 0);

	assert_int_equal(cancelled_state, UNLISTED);
	assert_int_equal(again, UNLISTED);
	assert_int_equal(status, UNLISTED + 1);
	assert_int_equal(atomic_load(&c.ran), 0);
	assert_int_equal(atomic_load(&c.done_calls), UNLISTED);
	sem_destroy(&running.started);
	sem_destroy(&g.started);
	sem_destroy(&g.open);
}

/* A task's token as a parent; releasing it is a no-op. */
struct task_parent {
	sem_t      started;
	ctp_token *kept;         /* a child handed to the test */
	int        create_rc;
	int        child_rc;
	int        token_reason;
};

static int task_parent_fn(void *arg, ctp_token *token)
{
	struct task_parent *t = arg;
	ctp_token          *child = NULL;

	ctp_token_release(token); /* the pool's: a no-op */
	t->create_rc = ctp_token_create(&child, token);
	if (t->create_rc != 0 || ctp_token_create(&t->kept, token) != 0) {
		ctp_token_release(child);
		tu_sem_post(&t->started);
		return -1;
	}
	tu_sem_post(&t->started);
	t->child_rc = ctp_token_sleep(child, CTP_FOREVER);
	t->token_reason = ctp_token_reason(token);
	ctp_token_release(child);
	return 0;
}

static void test_token_task_token_as_parent(void **state)
{
	ctp_pool          *pool = new_pool(1);
	struct task_parent t = { .create_rc = 1, .child_rc = 1 };
	ctp_task          *task;

	(void)state;
	tu_sem_init(&t.started, 0);
	task = submit(pool, task_parent_fn, &t, 0, NULL);
	tu_sem_wait(&t.started);
	assert_int_equal(t.create_rc, 0);
	assert_non_null(t.kept);
	assert_int_equal(ctp_task_cancel(task), -EINPROGRESS);
	assert_int_equal(finish(task), 0);
	assert_int_equal(t.child_rc, -ECANCELED);
	assert_int_equal(t.token_reason, -ECANCELED);
	assert_int_equal(ctp_token_reason(t.kept), -ECANCELED);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	/* The child outlives its task and the pool. */
	ctp_token_release(t.kept);
	sem_destroy(&t.started);
}

static void test_token_cancel_task_token_cancels_task(void **state)
{
	ctp_pool     *pool = new_pool(1);
	struct sleepy s = { .rc = 1 };
	ctp_task     *task;

	(void)state;
	tu_sem_init(&s.started, 0);
	task = submit(pool, sleepy_fn, &s, 0, NULL);
	tu_sem_wait(&s.started);
	/* Valid here: fn is running (it returns only once this fires it). */
	assert_int_equal(ctp_token_cancel(s.token), 0);
	assert_int_equal(ctp_task_cancel(task), -EALREADY);
	assert_int_equal(finish(task), -ECANCELED);
	assert_int_equal(s.rc, -ECANCELED);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&s.started);
}

/* A task waiting on a socket-like fd and its token's fd. */
struct task_poll {
	int   pipe_rd;
	sem_t started;
	int   rc;
	short pipe_revents;
	short token_revents;
};

static int task_poll_fn(void *arg, ctp_token *token)
{
	struct task_poll *t = arg;
	struct pollfd     p[2] = {
		{ .fd = t->pipe_rd, .events = POLLIN },
		{ .fd = ctp_token_fd(token), .events = POLLIN },
	};

	tu_sem_post(&t->started);
	if (p[1].fd < 0)
		return -1;
	t->rc = poll(p, 2, -1);
	t->pipe_revents = p[0].revents;
	t->token_revents = p[1].revents;
	return ctp_token_reason(token);
}

static void test_token_fd_wakes_task_polling_sockets(void **state)
{
	ctp_pool        *pool = new_pool(1);
	struct task_poll t = { .rc = -2 };
	ctp_task        *task;
	int              fds[2];

	(void)state;
	assert_int_equal(pipe(fds), 0);
	t.pipe_rd = fds[0];
	tu_sem_init(&t.started, 0);
	task = submit(pool, task_poll_fn, &t, 0, NULL);
	tu_sem_wait(&t.started);
	assert_int_equal(ctp_task_cancel(task), -EINPROGRESS);
	assert_int_equal(finish(task), -ECANCELED);
	assert_int_equal(t.rc, 1);
	assert_true(t.token_revents & POLLIN);
	assert_int_equal(t.pipe_revents, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	close(fds[0]);
	close(fds[1]);
	sem_destroy(&t.started);
}

/* ---- strerror ----------------------------------------------------------- */

static void test_token_strerror_names_every_code(void **state)
{
	static const int codes[] = {
		0, -EINVAL, -ENOMEM, -EAGAIN, -ESHUTDOWN, -ECANCELED,
		-ETIMEDOUT, -EDEADLK, -EINPROGRESS, -EALREADY,
	};
	const size_t n = sizeof(codes) / sizeof(codes[0]);
	const char  *s[sizeof(codes) / sizeof(codes[0])];
	const char  *other;
	size_t       i, j;

	(void)state;
	for (i = 0; i < n; i++) {
		s[i] = ctp_strerror(codes[i]);
		assert_non_null(s[i]);
		assert_true(s[i][0] != '\0');
		/* Static: the same text every time. */
		assert_string_equal(ctp_strerror(codes[i]), s[i]);
	}
	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++)
			assert_string_not_equal(s[i], s[j]);

	/* Other codes fall back to the system's text. */
	other = ctp_strerror(-EPIPE);
	assert_non_null(other);
	assert_string_equal(other, strerror(EPIPE));
}

/* A cancel reaches tasks under a task that has finished: root -> task T ->
 * task S (submitted by T's fn with parent = T's token, queued behind a
 * parked worker). T is DONE and its token never fired; ctp_token_cancel
 * (root) must still cancel S before it returns (found by the spin model's
 * author: the walk used to stop at the finished T, and S ran later). */
struct done_parent {
	ctp_pool  *pool;
	ctp_task  *s;
	sem_t      gate, gate_started, s_done;
	atomic_int s_ran, s_status, s_calls;
};

static int dp_gate_fn(void *arg, ctp_token *tok)
{
	struct done_parent *d = arg;

	(void)tok;
	tu_sem_post(&d->gate_started);
	tu_sem_wait(&d->gate);
	return 0;
}

static int dp_s_fn(void *arg, ctp_token *tok)
{
	struct done_parent *d = arg;

	(void)tok;
	atomic_fetch_add(&d->s_ran, 1);
	return 0;
}

static void dp_s_done(void *arg, int status)
{
	struct done_parent *d = arg;

	atomic_store(&d->s_status, status);
	atomic_fetch_add(&d->s_calls, 1);
	tu_sem_post(&d->s_done);
}

static int dp_t_fn(void *arg, ctp_token *tok)
{
	struct done_parent *d = arg;
	ctp_task_opts o = { .done = dp_s_done, .parent = tok };

	if (ctp_pool_submit(d->pool, dp_gate_fn, d, NULL, NULL) != 0)
		return -1;
	return ctp_pool_submit(d->pool, dp_s_fn, d, &o, &d->s);
}

static void test_token_cancel_reaches_tasks_under_finished_task(void **state)
{
	struct done_parent d = { .s_status = 1 };
	ctp_task_opts o = { 0 };
	ctp_token *root;
	ctp_task  *t;
	int        st = 1;

	(void)state;
	tu_sem_init(&d.gate, 0);
	tu_sem_init(&d.gate_started, 0);
	tu_sem_init(&d.s_done, 0);
	assert_int_equal(ctp_pool_create(&d.pool,
	                 &(ctp_pool_opts){ .threads = 1 }), 0);
	assert_int_equal(ctp_token_create(&root, NULL), 0);
	o.parent = root;
	assert_int_equal(ctp_pool_submit(d.pool, dp_t_fn, &d, &o, &t), 0);
	assert_int_equal(ctp_task_wait(t, CTP_SEC(10), &st), 0);
	assert_int_equal(st, 0);
	tu_sem_wait(&d.gate_started); /* the worker is held: S is queued */
	assert_int_equal(ctp_task_state(d.s), CTP_TASK_QUEUED);
	assert_int_equal(ctp_token_cancel(root), 0);
	/* S was finished by the cancel, on this thread, before it returned */
	assert_int_equal(atomic_load(&d.s_calls), 1);
	assert_int_equal(atomic_load(&d.s_status), -ECANCELED);
	assert_int_equal(ctp_task_state(d.s), CTP_TASK_CANCELLED);
	/* T itself stays finished with its own status */
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	tu_sem_post(&d.gate);
	assert_int_equal(ctp_pool_shutdown(d.pool, CTP_FOREVER, CTP_FOREVER),
	                 0);
	assert_int_equal(atomic_load(&d.s_ran), 0);
	ctp_task_release(t);
	ctp_task_release(d.s);
	ctp_token_release(root);
	assert_int_equal(ctp_pool_destroy(d.pool), 0);
	sem_destroy(&d.gate);
	sem_destroy(&d.gate_started);
	sem_destroy(&d.s_done);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_token_create_cancel_release),
		cmocka_unit_test(test_token_cancel_twice_is_ealready),
		cmocka_unit_test(test_token_rejects_null),
		cmocka_unit_test(test_token_release_and_unwatch_null_are_noops),
		cmocka_unit_test(test_token_children_fire_with_parent),
		cmocka_unit_test(test_token_cancel_child_never_fires_parent),
		cmocka_unit_test(test_token_child_of_fired_parent_starts_fired),
		cmocka_unit_test(test_token_release_parent_before_child),
		cmocka_unit_test(test_token_release_child_before_parent),
		cmocka_unit_test(test_token_cancel_reaches_through_released_middle),
		cmocka_unit_test(test_token_sleep_returns_zero_after_time),
		cmocka_unit_test(test_token_sleep_zero_does_not_block),
		cmocka_unit_test(test_token_sleep_fired_returns_at_once),
		cmocka_unit_test(test_token_sleep_rejects_bad_durations),
		cmocka_unit_test(test_token_sleep_woken_by_cancel),
		cmocka_unit_test(test_token_sleep_forever_woken_by_cancel),
		cmocka_unit_test(test_token_sleep_huge_woken_by_cancel),
		cmocka_unit_test(test_token_sleep_woken_by_parent_cancel),
		cmocka_unit_test(test_token_fd_readable_only_after_fire),
		cmocka_unit_test(test_token_fd_made_after_fire_is_readable),
		cmocka_unit_test(test_token_fd_readable_when_parent_cancelled),
		cmocka_unit_test(test_token_fd_wakes_blocked_poll),
		cmocka_unit_test(test_token_watch_runs_once_on_firing_thread),
		cmocka_unit_test(test_token_watch_fired_runs_at_once_on_caller),
		cmocka_unit_test(test_token_unwatch_before_fire_never_runs),
		cmocka_unit_test(test_token_watch_many_watchers_all_run),
		cmocka_unit_test(test_token_watch_children_run_when_parent_cancelled),
		cmocka_unit_test(test_token_watch_rejects_null),
		cmocka_unit_test(test_token_watch_fn_may_call_library),
		cmocka_unit_test(test_token_unwatch_inside_fn_does_not_wait),
		cmocka_unit_test(test_token_unwatch_waits_for_running_fn),
		cmocka_unit_test(test_token_cancel_wakes_sleeper_poller_and_watcher),
		cmocka_unit_test(test_token_deadline_wakes_sleeper),
		cmocka_unit_test(test_token_deadline_wakes_poller_and_watcher),
		cmocka_unit_test(test_token_first_reason_stays),
		cmocka_unit_test(test_token_group_cancel_fires_every_task),
		cmocka_unit_test(test_token_group_released_while_tasks_refer),
		cmocka_unit_test(test_token_group_freed_before_its_cancelled_tasks),
		cmocka_unit_test(test_token_task_token_as_parent),
		cmocka_unit_test(test_token_cancel_task_token_cancels_task),
		cmocka_unit_test(test_token_fd_wakes_task_polling_sockets),
		cmocka_unit_test(test_token_strerror_names_every_code),
		cmocka_unit_test(test_token_cancel_reaches_tasks_under_finished_task),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
