/*
 * Task fixtures shared by test_task.c, test_pool.c and test_shutdown.c:
 * struct rec (what happened to one task) with its fn and done, the submit
 * helpers, parked tasks (hold a worker until released), sleeping tasks (sleep
 * on their token), pool creation and stats helpers, and a bounded semaphore
 * wait. Everything here runs on worker threads except the helpers that call
 * assert_* (saturate, pool_new, assert_identity), which are for the test's
 * own thread only.
 */
#ifndef CTP_TEST_FIXTURES_H
#define CTP_TEST_FIXTURES_H

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ctpool.h"
#include "testutil.h"

/* Upper bound for things that must happen: a bug fails instead of hanging. */
#define BOUND CTP_SEC(10)
/* A status no callback ever reports. */
#define UNSET 0x7eadbeef

/* What happened to one task. First member of every task argument, so
 * rec_done works for all of them. */
struct rec {
	int        ret;         /* what fn returns */
	atomic_int ran;         /* times fn ran */
	atomic_int calls;       /* times done ran */
	atomic_int status;      /* status done got */
	pthread_t  done_thread; /* thread done ran on (read after calls) */
	sem_t      done_sem;    /* posted at the end of done */
};

static inline void rec_init(struct rec *r, int ret)
{
	memset(r, 0, sizeof(*r));
	r->ret = ret;
	atomic_init(&r->status, UNSET);
	tu_sem_init(&r->done_sem, 0);
}

static inline void rec_fini(struct rec *r)
{
	sem_destroy(&r->done_sem);
}

static inline int rec_fn(void *arg, ctp_token *tok)
{
	struct rec *r = arg;

	(void)tok;
	atomic_fetch_add(&r->ran, 1);
	return r->ret;
}

static inline void rec_done(void *arg, int status)
{
	struct rec *r = arg;

	r->done_thread = pthread_self();
	atomic_store(&r->status, status);
	atomic_fetch_add(&r->calls, 1);
	tu_sem_post(&r->done_sem);
}

/* Whether done ran on the calling thread. */
static inline bool done_here(struct rec *r)
{
	return pthread_equal(r->done_thread, pthread_self()) != 0;
}

static inline int noop_fn(void *arg, ctp_token *tok)
{
	(void)arg;
	(void)tok;
	return 0;
}

/* Submits fn(arg) with done = rec_done and the rest of base. */
static inline int submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                         ctp_task_opts base, ctp_task **task)
{
	base.done = rec_done;
	return ctp_pool_submit(pool, fn, arg, &base, task);
}

static inline int submit_rec(ctp_pool *pool, struct rec *r,
                             ctp_task_opts base, ctp_task **task)
{
	return submit(pool, rec_fn, r, base, task);
}

static const ctp_task_opts NO_OPTS __attribute__((unused));

/* A task that ignores its token: posts started, waits for release, then
 * records its token's reason and (when pool is set) tries a submit. */
struct parked {
	struct rec r;
	sem_t      started;
	sem_t      release;
	ctp_pool  *pool;        /* NULL: no late submit */
	atomic_int reason;      /* ctp_token_reason after the release */
	atomic_int late_submit; /* the submit into pool after the release */
};

static inline void parked_init(struct parked *p, int ret)
{
	memset(p, 0, sizeof(*p));
	rec_init(&p->r, ret);
	tu_sem_init(&p->started, 0);
	tu_sem_init(&p->release, 0);
	atomic_init(&p->reason, UNSET);
	atomic_init(&p->late_submit, UNSET);
}

static inline void parked_fini(struct parked *p)
{
	sem_destroy(&p->started);
	sem_destroy(&p->release);
	rec_fini(&p->r);
}

static inline int parked_fn(void *arg, ctp_token *tok)
{
	struct parked *p = arg;

	atomic_fetch_add(&p->r.ran, 1);
	tu_sem_post(&p->started);
	tu_sem_wait(&p->release);
	atomic_store(&p->reason, ctp_token_reason(tok));
	if (p->pool)
		atomic_store(&p->late_submit,
		             ctp_pool_submit(p->pool, noop_fn, NULL, NULL, NULL));
	return p->r.ret;
}

/* Parks n workers on p (detached, no done); returns once all n run. */
static inline void saturate(ctp_pool *pool, struct parked *p, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(ctp_pool_submit(pool, parked_fn, p, NULL, NULL), 0);
	for (unsigned i = 0; i < n; i++)
		tu_sem_wait(&p->started);
}

static inline void unpark(struct parked *p, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		tu_sem_post(&p->release);
}

/* rec_init(&q[i], 0) and submit_rec(q[i]) with NO_OPTS for i < n; handle i
 * goes to t[i] when t is not NULL. */
static inline void submit_recs(ctp_pool *pool, struct rec *q, int n,
                               ctp_task **t)
{
	for (int i = 0; i < n; i++) {
		rec_init(&q[i], 0);
		assert_int_equal(submit_rec(pool, &q[i], NO_OPTS,
		                            t ? &t[i] : NULL), 0);
	}
}

/* A task that honours its token: sleeps in ctp_token_sleep(ns), returns 7. */
struct sleeper {
	struct rec      r;
	sem_t           started;
	int64_t         ns;       /* how long to sleep */
	atomic_int      ret;      /* ctp_token_sleep's result */
	atomic_int      fired;    /* ctp_token_cancelled after the sleep */
	atomic_int      reason;   /* ctp_token_reason after the sleep */
	_Atomic int64_t woke_ns;  /* tu_now_ns after the sleep */
};

static inline void sleeper_init(struct sleeper *s, int64_t ns)
{
	memset(s, 0, sizeof(*s));
	rec_init(&s->r, 7);
	tu_sem_init(&s->started, 0);
	s->ns = ns;
	atomic_init(&s->ret, UNSET);
	atomic_init(&s->reason, UNSET);
}

static inline void sleeper_fini(struct sleeper *s)
{
	sem_destroy(&s->started);
	rec_fini(&s->r);
}

static inline int sleeper_fn(void *arg, ctp_token *tok)
{
	struct sleeper *s = arg;

	atomic_fetch_add(&s->r.ran, 1);
	tu_sem_post(&s->started);
	atomic_store(&s->ret, ctp_token_sleep(tok, s->ns));
	atomic_store(&s->fired, ctp_token_cancelled(tok));
	atomic_store(&s->reason, ctp_token_reason(tok));
	atomic_store(&s->woke_ns, tu_now_ns());
	return s->r.ret;
}

/* Starts s = sleeper_init(s, CTP_FOREVER) with done = rec_done (handle in
 * *t when t is not NULL); returns once it runs. */
static inline void start_sleeper(ctp_pool *pool, struct sleeper *s,
                                 ctp_task **t)
{
	sleeper_init(s, CTP_FOREVER);
	assert_int_equal(submit(pool, sleeper_fn, s, NO_OPTS, t), 0);
	tu_sem_wait(&s->started);
}

/* sem_timedwait for ns; false when it ran out. */
static inline bool sem_wait_for(sem_t *s, int64_t ns)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ns / 1000000000;
	ts.tv_nsec += ns % 1000000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	while (sem_timedwait(s, &ts) != 0) {
		if (errno == ETIMEDOUT)
			return false;
		if (errno != EINTR)
			abort();
	}
	return true;
}

static inline ctp_pool *pool_new(unsigned threads, size_t capacity)
{
	ctp_pool_opts o = { .threads = threads, .queue_capacity = capacity };
	ctp_pool *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	assert_non_null(pool);
	return pool;
}

static inline ctp_stats stats_of(ctp_pool *pool)
{
	ctp_stats s;

	memset(&s, 0, sizeof(s));
	ctp_pool_stats(pool, &s);
	return s;
}

/* Every accepted task is accounted for and nothing is queued or running. */
static inline void assert_identity(const ctp_stats *s)
{
	assert_int_equal(s->submitted,
	                 s->completed + s->cancelled + s->timed_out + s->dropped);
	assert_int_equal(s->queued, 0);
	assert_int_equal(s->running, 0);
}

#endif /* CTP_TEST_FIXTURES_H */
