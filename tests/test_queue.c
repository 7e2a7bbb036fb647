/*
 * Tests for ctp_queue: creation errors and capacity rounding, FIFO order,
 * NULL items, the -EAGAIN / -ETIMEDOUT / -EINVAL results, cancellation
 * tokens (a fired token wins over an item, a slot and a closed queue; a
 * token fired during a wait wakes it), close (wakes every waiter, lets
 * queued items drain, then -ESHUTDOWN), ctp_queue_size, and a
 * multi-producer multi-consumer run where every item arrives exactly once.
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
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctpool.h"
#include "testutil.h"

/* A wait that must end because of a wake-up ends well within this. */
#define PROMPT_NS CTP_SEC(5)
/* Timeouts under test, and how late they may be in a slow (sanitised) run. */
#define SHORT_TIMEOUT CTP_MSEC(20)
#define LATE_SLACK    CTP_SEC(2)

#define ITEM(n) ((void *)(uintptr_t)(n))

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

static ctp_queue *new_queue(size_t capacity)
{
	ctp_queue *q = NULL;

	assert_int_equal(ctp_queue_create(&q, capacity), 0);
	assert_non_null(q);
	return q;
}

static ctp_token *new_token(void)
{
	ctp_token *t = NULL;

	assert_int_equal(ctp_token_create(&t, NULL), 0);
	assert_non_null(t);
	return t;
}

/* Pushes items until the queue is full; returns how many it took. */
static size_t fill(ctp_queue *q, size_t limit)
{
	size_t n = 0;

	while (n < limit && ctp_queue_push(q, ITEM(n + 1), NULL, 0) == 0)
		n++;
	return n;
}

/* ---- a push or pop on a helper thread ----------------------------------- */

struct op {
	ctp_queue *q;
	ctp_token *token;
	void      *item;     /* pushed, or popped */
	int64_t    timeout;
	sem_t      ready;    /* posted right before the blocking call */
	int        rc;
};

static void op_init(struct op *op, ctp_queue *q, ctp_token *token, void *item)
{
	op->q = q;
	op->token = token;
	op->item = item;
	op->timeout = CTP_FOREVER;
	op->rc = 1;
	tu_sem_init(&op->ready, 0);
}

static void *push_thread(void *arg)
{
	struct op *op = arg;

	tu_sem_post(&op->ready);
	op->rc = ctp_queue_push(op->q, op->item, op->token, op->timeout);
	return NULL;
}

static void *pop_thread(void *arg)
{
	struct op *op = arg;

	tu_sem_post(&op->ready);
	op->rc = ctp_queue_pop(op->q, &op->item, op->token, op->timeout);
	return NULL;
}

/* ---- creation and capacity ---------------------------------------------- */

static void test_queue_create_rejects_bad_arguments(void **state)
{
	ctp_queue *q = NULL;

	(void)state;
	assert_int_equal(ctp_queue_create(NULL, 4), -EINVAL);
	assert_int_equal(ctp_queue_create(&q, 0), -EINVAL);
	assert_int_equal(ctp_queue_create(&q, CTP_MAX_CAPACITY + 1), -EINVAL);
	assert_int_equal(ctp_queue_create(&q, SIZE_MAX), -EINVAL);
	assert_int_equal(ctp_queue_create(&q, SIZE_MAX / 2 + 2), -EINVAL);
}

static void test_queue_capacity_rounds_up_to_power_of_two(void **state)
{
	static const struct { size_t asked, holds; } cases[] = {
		{ 1, 1 }, { 2, 2 }, { 3, 4 }, { 4, 4 }, { 5, 8 }, { 100, 128 },
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ctp_queue *q = new_queue(cases[i].asked);
		void      *item;

		assert_int_equal(fill(q, 1000), cases[i].holds);
		assert_int_equal(ctp_queue_size(q), cases[i].holds);
		assert_int_equal(ctp_queue_push(q, ITEM(999), NULL, 0), -EAGAIN);
		/* One pop frees exactly one slot. */
		assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
		assert_int_equal(ctp_queue_push(q, ITEM(999), NULL, 0), 0);
		assert_int_equal(ctp_queue_push(q, ITEM(999), NULL, 0), -EAGAIN);
		ctp_queue_destroy(q);
	}
}

static void test_queue_capacity_three_holds_four(void **state)
{
	ctp_queue *q = new_queue(3);
	int        i;

	(void)state;
	for (i = 1; i <= 4; i++)
		assert_int_equal(ctp_queue_push(q, ITEM(i), NULL, 0), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(5), NULL, 0), -EAGAIN);
	assert_int_equal(ctp_queue_size(q), 4);
	ctp_queue_destroy(q);
}

static void test_queue_capacity_one_holds_one(void **state)
{
	ctp_queue *q = new_queue(1);

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(2), NULL, 0), -EAGAIN);
	assert_int_equal(ctp_queue_size(q), 1);
	ctp_queue_destroy(q);
}

/* ---- order, items, size ------------------------------------------------- */

static void test_queue_fifo_order(void **state)
{
	ctp_queue *q = new_queue(16);
	void      *item;
	int        round, i;

	(void)state;
	/* Several rounds so the indices wrap around the ring. */
	for (round = 0; round < 5; round++) {
		for (i = 1; i <= 11; i++)
			assert_int_equal(ctp_queue_push(q, ITEM(round * 100 + i),
			                                NULL, 0), 0);
		for (i = 1; i <= 11; i++) {
			assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
			assert_ptr_equal(item, ITEM(round * 100 + i));
		}
	}
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), -EAGAIN);
	ctp_queue_destroy(q);
}

static void test_queue_null_is_a_valid_item(void **state)
{
	ctp_queue *q = new_queue(4);
	int        x;
	void      *item = &x;

	(void)state;
	assert_int_equal(ctp_queue_push(q, NULL, NULL, 0), 0);
	assert_int_equal(ctp_queue_push(q, &x, NULL, 0), 0);
	assert_int_equal(ctp_queue_size(q), 2);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_null(item);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, &x);
	ctp_queue_destroy(q);
}

static void test_queue_size_counts_items(void **state)
{
	ctp_queue *q = new_queue(8);
	void      *item;

	(void)state;
	assert_int_equal(ctp_queue_size(NULL), 0);
	assert_int_equal(ctp_queue_size(q), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(2), NULL, 0), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(3), NULL, 0), 0);
	assert_int_equal(ctp_queue_size(q), 3);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_int_equal(ctp_queue_size(q), 2);
	ctp_queue_close(q);
	assert_int_equal(ctp_queue_size(q), 2);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_int_equal(ctp_queue_size(q), 0);
	ctp_queue_destroy(q);
}

/* ---- immediate failures and argument checks ----------------------------- */

static void test_queue_pop_empty_no_wait_is_eagain(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *t = new_token();
	void      *item;

	(void)state;
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), -EAGAIN);
	assert_int_equal(ctp_queue_pop(q, &item, t, 0), -EAGAIN);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

static void test_queue_push_full_no_wait_is_eagain(void **state)
{
	ctp_queue *q = new_queue(2);
	ctp_token *t = new_token();

	(void)state;
	assert_int_equal(fill(q, 2), 2);
	assert_int_equal(ctp_queue_push(q, ITEM(9), NULL, 0), -EAGAIN);
	assert_int_equal(ctp_queue_push(q, ITEM(9), t, 0), -EAGAIN);
	assert_int_equal(ctp_queue_size(q), 2);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

static void test_queue_rejects_negative_durations(void **state)
{
	static const int64_t bad[] = { -2, -1000, CTP_MSEC(-20), INT64_MIN };
	ctp_queue *q = new_queue(4);
	void      *item;
	size_t     i;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* Neither a non-full nor a non-empty queue hides the error. */
		assert_int_equal(ctp_queue_push(q, ITEM(2), NULL, bad[i]), -EINVAL);
		assert_int_equal(ctp_queue_pop(q, &item, NULL, bad[i]), -EINVAL);
	}
	assert_int_equal(ctp_queue_size(q), 1);
	ctp_queue_destroy(q);
}

static void test_queue_rejects_null_arguments(void **state)
{
	ctp_queue *q = new_queue(4);
	void      *item;

	(void)state;
	assert_int_equal(ctp_queue_push(NULL, ITEM(1), NULL, 0), -EINVAL);
	assert_int_equal(ctp_queue_pop(NULL, &item, NULL, 0), -EINVAL);
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	/* A pop with nowhere to put the item must not lose it. */
	assert_int_equal(ctp_queue_pop(q, NULL, NULL, 0), -EINVAL);
	assert_int_equal(ctp_queue_pop(q, NULL, NULL, CTP_FOREVER), -EINVAL);
	assert_int_equal(ctp_queue_size(q), 1);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(1));
	ctp_queue_destroy(q);
}

static void test_queue_destroy_and_close_null_are_noops(void **state)
{
	(void)state;
	ctp_queue_close(NULL);
	ctp_queue_destroy(NULL);
}

static void test_queue_destroy_leaves_items_alone(void **state)
{
	ctp_queue *q = new_queue(4);
	int       *owned = malloc(sizeof(*owned));

	(void)state;
	assert_non_null(owned);
	*owned = 42;
	assert_int_equal(ctp_queue_push(q, owned, NULL, 0), 0);
	ctp_queue_destroy(q);
	/* Still ours: the library neither freed nor wrote it. */
	assert_int_equal(*owned, 42);
	free(owned);
}

static void test_queue_huge_timeout_does_not_overflow(void **state)
{
	ctp_queue *q = new_queue(1);
	struct op  op;
	pthread_t  t;
	void      *item;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, INT64_MAX), 0);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, INT64_MAX), 0);
	assert_ptr_equal(item, ITEM(1));

	/* A pop waiting INT64_MAX ns gets the next item, not -ETIMEDOUT. */
	op_init(&op, q, NULL, NULL);
	op.timeout = INT64_MAX;
	t = tu_spawn(pop_thread, &op);
	tu_sem_wait(&op.ready);
	assert_int_equal(ctp_queue_push(q, ITEM(7), NULL, 0), 0);
	join_or_abort(t);
	assert_int_equal(op.rc, 0);
	assert_ptr_equal(op.item, ITEM(7));
	sem_destroy(&op.ready);
	ctp_queue_destroy(q);
}

/* ---- timeouts ----------------------------------------------------------- */

static void check_timed_out(int rc, int64_t start)
{
	int64_t elapsed = tu_now_ns() - start;

	assert_int_equal(rc, -ETIMEDOUT);
	assert_true(elapsed >= SHORT_TIMEOUT);              /* never early */
	assert_true(elapsed < SHORT_TIMEOUT + LATE_SLACK);  /* not lost */
}

static void test_queue_pop_times_out(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *t = new_token();
	void      *item;
	int64_t    start;
	int        rc;

	(void)state;
	start = tu_now_ns();
	rc = ctp_queue_pop(q, &item, NULL, SHORT_TIMEOUT);
	check_timed_out(rc, start);

	/* Same with a token that does not fire. */
	start = tu_now_ns();
	rc = ctp_queue_pop(q, &item, t, SHORT_TIMEOUT);
	check_timed_out(rc, start);
	assert_int_equal(ctp_token_reason(t), 0);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

static void test_queue_push_times_out(void **state)
{
	ctp_queue *q = new_queue(1);
	ctp_token *t = new_token();
	int64_t    start;
	int        rc;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	start = tu_now_ns();
	rc = ctp_queue_push(q, ITEM(2), NULL, SHORT_TIMEOUT);
	check_timed_out(rc, start);

	start = tu_now_ns();
	rc = ctp_queue_push(q, ITEM(2), t, SHORT_TIMEOUT);
	check_timed_out(rc, start);
	assert_int_equal(ctp_queue_size(q), 1);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

/* ---- blocked operations complete ---------------------------------------- */

static void test_queue_blocked_push_completes_when_consumer_pops(void **state)
{
	ctp_queue *q = new_queue(1);
	struct op  op;
	pthread_t  t;
	void      *item;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	op_init(&op, q, NULL, ITEM(2));
	t = tu_spawn(push_thread, &op);
	tu_sem_wait(&op.ready);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(1));
	join_or_abort(t);
	assert_int_equal(op.rc, 0);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(2));
	sem_destroy(&op.ready);
	ctp_queue_destroy(q);
}

static void test_queue_blocked_pop_completes_when_producer_pushes(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *tok = new_token();
	struct op  op;
	pthread_t  t;

	(void)state;
	op_init(&op, q, tok, NULL);
	t = tu_spawn(pop_thread, &op);
	tu_sem_wait(&op.ready);
	assert_int_equal(ctp_queue_push(q, ITEM(5), NULL, 0), 0);
	join_or_abort(t);
	assert_int_equal(op.rc, 0);
	assert_ptr_equal(op.item, ITEM(5));
	assert_int_equal(ctp_queue_size(q), 0);
	sem_destroy(&op.ready);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
}

/* ---- tokens ------------------------------------------------------------- */

static void test_queue_fired_token_wins_over_available_item(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *t = new_token();
	void      *item = NULL;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(ctp_queue_pop(q, &item, t, 0), -ECANCELED);
	assert_int_equal(ctp_queue_pop(q, &item, t, CTP_FOREVER), -ECANCELED);
	/* The item was left where it was. */
	assert_int_equal(ctp_queue_size(q), 1);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(1));
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

static void test_queue_fired_token_wins_over_free_slot(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *t = new_token();

	(void)state;
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(1), t, 0), -ECANCELED);
	assert_int_equal(ctp_queue_push(q, ITEM(1), t, CTP_FOREVER), -ECANCELED);
	assert_int_equal(ctp_queue_size(q), 0);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

static void test_queue_fired_token_wins_over_closed_queue(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *t = new_token();
	void      *item;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	ctp_queue_close(q);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(2), t, 0), -ECANCELED);
	/* Closed but not empty. */
	assert_int_equal(ctp_queue_pop(q, &item, t, 0), -ECANCELED);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	/* Closed and empty. */
	assert_int_equal(ctp_queue_pop(q, &item, t, 0), -ECANCELED);
	assert_int_equal(ctp_queue_pop(q, &item, t, CTP_FOREVER), -ECANCELED);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), -ESHUTDOWN);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

static void test_queue_fired_token_returns_at_once(void **state)
{
	ctp_queue *q = new_queue(1);
	ctp_token *t = new_token();
	void      *item;
	int64_t    start;

	(void)state;
	assert_int_equal(ctp_token_cancel(t), 0);
	start = tu_now_ns();
	/* Empty queue, long wait: the fired token ends it at once. */
	assert_int_equal(ctp_queue_pop(q, &item, t, CTP_SEC(30)), -ECANCELED);
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	/* Full queue, long wait. */
	assert_int_equal(ctp_queue_push(q, ITEM(2), t, CTP_SEC(30)), -ECANCELED);
	assert_true(tu_now_ns() - start < PROMPT_NS);
	ctp_token_release(t);
	ctp_queue_destroy(q);
}

/* A token fired from the parent also ends the wait, with its reason. */
static void test_queue_token_parent_fired_wins(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *parent = new_token();
	ctp_token *child = NULL;
	void      *item;

	(void)state;
	assert_int_equal(ctp_token_create(&child, parent), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(1), child, 0), 0);
	assert_int_equal(ctp_token_cancel(parent), 0);
	assert_int_equal(ctp_queue_pop(q, &item, child, 0), -ECANCELED);
	assert_int_equal(ctp_queue_push(q, ITEM(2), child, 0), -ECANCELED);
	assert_int_equal(ctp_queue_size(q), 1);
	ctp_token_release(child);
	ctp_token_release(parent);
	ctp_queue_destroy(q);
}

static void test_queue_token_wakes_blocked_pop(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *tok = new_token();
	struct op  op;
	pthread_t  t;
	int64_t    fired;

	(void)state;
	op_init(&op, q, tok, ITEM(77));
	t = tu_spawn(pop_thread, &op);
	tu_sem_wait(&op.ready);
	fired = tu_now_ns();
	assert_int_equal(ctp_token_cancel(tok), 0);
	join_or_abort(t);
	assert_true(tu_now_ns() - fired < PROMPT_NS);
	assert_int_equal(op.rc, -ECANCELED);
	assert_int_equal(ctp_queue_size(q), 0);
	sem_destroy(&op.ready);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
}

static void test_queue_token_wakes_blocked_push(void **state)
{
	ctp_queue *q = new_queue(1);
	ctp_token *tok = new_token();
	struct op  op;
	pthread_t  t;
	void      *item;
	int64_t    fired;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	op_init(&op, q, tok, ITEM(2));
	t = tu_spawn(push_thread, &op);
	tu_sem_wait(&op.ready);
	fired = tu_now_ns();
	assert_int_equal(ctp_token_cancel(tok), 0);
	join_or_abort(t);
	assert_true(tu_now_ns() - fired < PROMPT_NS);
	assert_int_equal(op.rc, -ECANCELED);
	/* The blocked item was not added. */
	assert_int_equal(ctp_queue_size(q), 1);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(1));
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), -EAGAIN);
	sem_destroy(&op.ready);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
}

/* ---- close -------------------------------------------------------------- */

#define WAITERS 4

static void test_queue_close_wakes_blocked_pops(void **state)
{
	ctp_queue *q = new_queue(4);
	ctp_token *tok = new_token();
	struct op  ops[WAITERS];
	pthread_t  t[WAITERS];
	int64_t    closed;
	int        i;

	(void)state;
	/* Half wait with a token, half without: both kinds of wait wake. */
	for (i = 0; i < WAITERS; i++) {
		op_init(&ops[i], q, i % 2 ? tok : NULL, ITEM(1));
		t[i] = tu_spawn(pop_thread, &ops[i]);
	}
	for (i = 0; i < WAITERS; i++)
		tu_sem_wait(&ops[i].ready);
	closed = tu_now_ns();
	ctp_queue_close(q);
	for (i = 0; i < WAITERS; i++)
		join_or_abort(t[i]);
	assert_true(tu_now_ns() - closed < PROMPT_NS);
	for (i = 0; i < WAITERS; i++) {
		assert_int_equal(ops[i].rc, -ESHUTDOWN);
		sem_destroy(&ops[i].ready);
	}
	assert_int_equal(ctp_token_reason(tok), 0);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
}

static void test_queue_close_wakes_blocked_pushes(void **state)
{
	ctp_queue *q = new_queue(1);
	ctp_token *tok = new_token();
	struct op  ops[WAITERS];
	pthread_t  t[WAITERS];
	void      *item;
	int64_t    closed;
	int        i;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	for (i = 0; i < WAITERS; i++) {
		op_init(&ops[i], q, i % 2 ? tok : NULL, ITEM(100 + i));
		t[i] = tu_spawn(push_thread, &ops[i]);
	}
	for (i = 0; i < WAITERS; i++)
		tu_sem_wait(&ops[i].ready);
	closed = tu_now_ns();
	ctp_queue_close(q);
	for (i = 0; i < WAITERS; i++)
		join_or_abort(t[i]);
	assert_true(tu_now_ns() - closed < PROMPT_NS);
	for (i = 0; i < WAITERS; i++) {
		assert_int_equal(ops[i].rc, -ESHUTDOWN);
		sem_destroy(&ops[i].ready);
	}
	/* Only the item queued before close is there. */
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(1));
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), -ESHUTDOWN);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
}

static void test_queue_close_drains_then_shuts_down(void **state)
{
	ctp_queue *q = new_queue(2);
	ctp_token *tok = new_token();
	void      *item;
	int64_t    start;

	(void)state;
	assert_int_equal(ctp_queue_push(q, ITEM(1), NULL, 0), 0);
	assert_int_equal(ctp_queue_push(q, ITEM(2), NULL, 0), 0);
	ctp_queue_close(q);
	ctp_queue_close(q); /* idempotent */

	/* Pushes fail, full or not, with or without a wait or token. */
	assert_int_equal(ctp_queue_push(q, ITEM(3), NULL, 0), -ESHUTDOWN);
	assert_int_equal(ctp_queue_push(q, ITEM(3), tok, CTP_FOREVER), -ESHUTDOWN);

	/* Queued items still come out, in order. */
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, ITEM(1));
	assert_int_equal(ctp_queue_push(q, ITEM(3), NULL, 0), -ESHUTDOWN);
	assert_int_equal(ctp_queue_pop(q, &item, tok, CTP_FOREVER), 0);
	assert_ptr_equal(item, ITEM(2));

	/* Closed and empty: -ESHUTDOWN for every timeout, never a wait. */
	start = tu_now_ns();
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), -ESHUTDOWN);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, SHORT_TIMEOUT), -ESHUTDOWN);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, CTP_FOREVER), -ESHUTDOWN);
	assert_int_equal(ctp_queue_pop(q, &item, tok, CTP_FOREVER), -ESHUTDOWN);
	assert_int_equal(ctp_queue_push(q, ITEM(3), NULL, 0), -ESHUTDOWN);
	assert_true(tu_now_ns() - start < PROMPT_NS);
	assert_int_equal(ctp_queue_size(q), 0);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
}

/* ---- many producers, many consumers ------------------------------------- */

#define MP_PRODUCERS 4
#define MP_CONSUMERS 4
#define MP_ITEMS     50000 /* per producer */
#define MP_CAPACITY  64

struct mpmc {
	ctp_queue  *q;
	atomic_int *seen;         /* per item: times popped */
	atomic_int  push_errors;  /* pushes that did not return 0 */
	atomic_int  pop_errors;   /* pops that returned neither 0 nor -ESHUTDOWN */
	atomic_int  bad_items;    /* popped values never pushed */
	atomic_int  order_errors; /* one producer's items seen out of order */
};

struct producer {
	struct mpmc *m;
	int          id;
};

static void *mp_produce(void *arg)
{
	struct producer *p = arg;
	int              i;

	for (i = 0; i < MP_ITEMS; i++) {
		size_t k = (size_t)p->id * MP_ITEMS + (size_t)i;

		if (ctp_queue_push(p->m->q, ITEM(k + 1), NULL, CTP_FOREVER) != 0)
			atomic_fetch_add(&p->m->push_errors, 1);
	}
	return NULL;
}

static void *mp_consume(void *arg)
{
	struct mpmc *m = arg;
	long         last[MP_PRODUCERS];
	void        *item;
	int          i, rc;

	for (i = 0; i < MP_PRODUCERS; i++)
		last[i] = -1;
	while ((rc = ctp_queue_pop(m->q, &item, NULL, CTP_FOREVER)) == 0) {
		size_t k = (size_t)(uintptr_t)item - 1;
		int    p;

		if ((uintptr_t)item == 0 || k >= (size_t)MP_PRODUCERS * MP_ITEMS) {
			atomic_fetch_add(&m->bad_items, 1);
			continue;
		}
		/* FIFO: each consumer sees one producer's items in order. */
		p = (int)(k / MP_ITEMS);
		if ((long)(k % MP_ITEMS) <= last[p])
			atomic_fetch_add(&m->order_errors, 1);
		last[p] = (long)(k % MP_ITEMS);
		atomic_fetch_add(&m->seen[k], 1);
	}
	if (rc != -ESHUTDOWN)
		atomic_fetch_add(&m->pop_errors, 1);
	return NULL;
}

static void test_queue_mpmc_every_item_exactly_once(void **state)
{
	const size_t    total = (size_t)MP_PRODUCERS * MP_ITEMS;
	struct mpmc     m = { 0 };
	struct producer prod[MP_PRODUCERS];
	pthread_t       pt[MP_PRODUCERS], ct[MP_CONSUMERS];
	size_t          k, missing = 0, duplicated = 0;
	int             i;

	(void)state;
	m.q = new_queue(MP_CAPACITY);
	m.seen = calloc(total, sizeof(*m.seen));
	assert_non_null(m.seen);
	for (k = 0; k < total; k++)
		atomic_init(&m.seen[k], 0);

	for (i = 0; i < MP_CONSUMERS; i++)
		ct[i] = tu_spawn(mp_consume, &m);
	for (i = 0; i < MP_PRODUCERS; i++) {
		prod[i].m = &m;
		prod[i].id = i;
		pt[i] = tu_spawn(mp_produce, &prod[i]);
	}
	for (i = 0; i < MP_PRODUCERS; i++)
		tu_join(pt[i]);
	ctp_queue_close(m.q);
	for (i = 0; i < MP_CONSUMERS; i++)
		tu_join(ct[i]);

	for (k = 0; k < total; k++) {
		int n = atomic_load(&m.seen[k]);

		missing += n == 0;
		duplicated += n > 1;
	}
	assert_int_equal(atomic_load(&m.push_errors), 0);
	assert_int_equal(atomic_load(&m.pop_errors), 0);
	assert_int_equal(atomic_load(&m.bad_items), 0);
	assert_int_equal(atomic_load(&m.order_errors), 0);
	assert_int_equal(missing, 0);
	assert_int_equal(duplicated, 0);
	assert_int_equal(ctp_queue_size(m.q), 0);
	free(m.seen);
	ctp_queue_destroy(m.q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_queue_create_rejects_bad_arguments),
		cmocka_unit_test(test_queue_capacity_rounds_up_to_power_of_two),
		cmocka_unit_test(test_queue_capacity_three_holds_four),
		cmocka_unit_test(test_queue_capacity_one_holds_one),
		cmocka_unit_test(test_queue_fifo_order),
		cmocka_unit_test(test_queue_null_is_a_valid_item),
		cmocka_unit_test(test_queue_size_counts_items),
		cmocka_unit_test(test_queue_pop_empty_no_wait_is_eagain),
		cmocka_unit_test(test_queue_push_full_no_wait_is_eagain),
		cmocka_unit_test(test_queue_rejects_negative_durations),
		cmocka_unit_test(test_queue_rejects_null_arguments),
		cmocka_unit_test(test_queue_destroy_and_close_null_are_noops),
		cmocka_unit_test(test_queue_destroy_leaves_items_alone),
		cmocka_unit_test(test_queue_huge_timeout_does_not_overflow),
		cmocka_unit_test(test_queue_pop_times_out),
		cmocka_unit_test(test_queue_push_times_out),
		cmocka_unit_test(test_queue_blocked_push_completes_when_consumer_pops),
		cmocka_unit_test(test_queue_blocked_pop_completes_when_producer_pushes),
		cmocka_unit_test(test_queue_fired_token_wins_over_available_item),
		cmocka_unit_test(test_queue_fired_token_wins_over_free_slot),
		cmocka_unit_test(test_queue_fired_token_wins_over_closed_queue),
		cmocka_unit_test(test_queue_fired_token_returns_at_once),
		cmocka_unit_test(test_queue_token_parent_fired_wins),
		cmocka_unit_test(test_queue_token_wakes_blocked_pop),
		cmocka_unit_test(test_queue_token_wakes_blocked_push),
		cmocka_unit_test(test_queue_close_wakes_blocked_pops),
		cmocka_unit_test(test_queue_close_wakes_blocked_pushes),
		cmocka_unit_test(test_queue_close_drains_then_shuts_down),
		cmocka_unit_test(test_queue_mpmc_every_item_exactly_once),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
