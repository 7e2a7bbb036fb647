/*
 * peer_textbook.c: the thread pool everyone writes, as a baseline.
 *
 * One mutex, one "not empty" condition variable, an intrusive doubly linked
 * FIFO of job nodes, and workers that loop
 *     lock; while (empty && !stop) wait; pop; unlock; run;
 * A node is malloc'ed per submit and freed after its job ran, as most
 * hand-written pools do. wait_idle counts pending jobs under the same mutex
 * with a second condition variable. Shutdown sets `stop`, broadcasts, and
 * joins every worker (the workers finish what is queued first, the usual
 * "if (stop && empty) return" loop).
 *
 * Handles: the node itself, reference counted (the queue/worker's reference
 * and the handle's), so a worker never frees a node a caller still holds.
 * cancel unlinks a node that is still queued, in O(1) under the mutex.
 * Groups: a tag pointer in the node; cancel_group walks the list under the
 * mutex and unlinks the group's nodes.
 * Busy stop: the driver's flag loop (sleep 10 ms, look at the flag).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "peer.h"

enum { NODE_QUEUED, NODE_RUNNING, NODE_DONE, NODE_CANCELLED };

struct node {
	struct node       *prev, *next;
	struct bench_item *item;
	void              *group;  /* cancel_group tag, or NULL */
	int                state;  /* NODE_*, under the pool's mutex */
	atomic_int         refs;   /* queue/worker + handle */
};

struct tpool {
	pthread_mutex_t mu;
	pthread_cond_t  not_empty;
	pthread_cond_t  idle;        /* pending became 0 */
	struct node    *head, *tail;
	size_t          pending;     /* queued + running */
	bool            stop;
	pthread_t      *threads;
	unsigned        nthreads;
};

static void node_put(struct node *n)
{
	if (atomic_fetch_sub_explicit(&n->refs, 1, memory_order_acq_rel) == 1)
		free(n);
}

/* Under the mutex. */
static void unlink_node(struct tpool *tp, struct node *n)
{
	if (n->prev != NULL)
		n->prev->next = n->next;
	else
		tp->head = n->next;
	if (n->next != NULL)
		n->next->prev = n->prev;
	else
		tp->tail = n->prev;
	n->prev = n->next = NULL;
}

/* Under the mutex. */
static void job_finished(struct tpool *tp, size_t count)
{
	tp->pending -= count;
	if (tp->pending == 0)
		pthread_cond_broadcast(&tp->idle);
}

static void *worker(void *arg)
{
	struct tpool *tp = arg;

	for (;;) {
		struct node *n;

		pthread_mutex_lock(&tp->mu);
		while (tp->head == NULL && !tp->stop)
			pthread_cond_wait(&tp->not_empty, &tp->mu);
		if (tp->head == NULL) { /* stop, and nothing left */
			pthread_mutex_unlock(&tp->mu);
			return NULL;
		}
		n = tp->head;
		unlink_node(tp, n);
		n->state = NODE_RUNNING;
		pthread_mutex_unlock(&tp->mu);

		n->item->run(n->item);

		pthread_mutex_lock(&tp->mu);
		n->state = NODE_DONE;
		job_finished(tp, 1);
		pthread_mutex_unlock(&tp->mu);
		node_put(n);
	}
}

static void tp_free(struct tpool *tp)
{
	pthread_cond_destroy(&tp->idle);
	pthread_cond_destroy(&tp->not_empty);
	pthread_mutex_destroy(&tp->mu);
	free(tp->threads);
	free(tp);
}

static void tp_shutdown(void *pool)
{
	struct tpool *tp = pool;

	pthread_mutex_lock(&tp->mu);
	tp->stop = true;
	pthread_cond_broadcast(&tp->not_empty);
	pthread_mutex_unlock(&tp->mu);
	for (unsigned i = 0; i < tp->nthreads; i++)
		pthread_join(tp->threads[i], NULL);
	tp_free(tp);
}

static void *tp_create(unsigned workers, size_t capacity)
{
	struct tpool *tp = calloc(1, sizeof(*tp));

	(void)capacity; /* unbounded */
	if (tp == NULL)
		return NULL;
	tp->threads = calloc(workers, sizeof(*tp->threads));
	if (tp->threads == NULL) {
		free(tp);
		return NULL;
	}
	pthread_mutex_init(&tp->mu, NULL);
	pthread_cond_init(&tp->not_empty, NULL);
	pthread_cond_init(&tp->idle, NULL);
	for (unsigned i = 0; i < workers; i++) {
		if (pthread_create(&tp->threads[i], NULL, worker, tp) != 0) {
			tp_shutdown(tp);
			return NULL;
		}
		tp->nthreads++;
	}
	return tp;
}

static struct node *enqueue(struct tpool *tp, struct bench_item *item,
                            void *group, int refs)
{
	struct node *n = malloc(sizeof(*n));

	if (n == NULL)
		return NULL;
	n->item = item;
	n->group = group;
	n->state = NODE_QUEUED;
	n->next = NULL;
	atomic_init(&n->refs, refs);

	pthread_mutex_lock(&tp->mu);
	n->prev = tp->tail;
	if (tp->tail != NULL)
		tp->tail->next = n;
	else
		tp->head = n;
	tp->tail = n;
	tp->pending++;
	pthread_cond_signal(&tp->not_empty);
	pthread_mutex_unlock(&tp->mu);
	return n;
}

static int tp_submit(void *pool, void *producer, struct bench_item *item)
{
	(void)producer;
	return enqueue(pool, item, NULL, 1) != NULL ? 0 : -1;
}

static void tp_wait_idle(void *pool)
{
	struct tpool *tp = pool;

	pthread_mutex_lock(&tp->mu);
	while (tp->pending != 0)
		pthread_cond_wait(&tp->idle, &tp->mu);
	pthread_mutex_unlock(&tp->mu);
}

/* ---- cancel by handle ---------------------------------------------------- */

static void *tp_submit_handle(void *pool, struct bench_item *item)
{
	return enqueue(pool, item, NULL, 2);
}

static int tp_cancel(void *pool, void *handle)
{
	struct tpool *tp = pool;
	struct node  *n = handle;
	bool          queued;

	pthread_mutex_lock(&tp->mu);
	queued = n->state == NODE_QUEUED;
	if (queued) {
		unlink_node(tp, n);
		n->state = NODE_CANCELLED;
		job_finished(tp, 1);
	}
	pthread_mutex_unlock(&tp->mu);
	if (queued)
		node_put(n); /* the queue's reference */
	return queued ? 1 : 0;
}

static void tp_release(void *pool, void *handle)
{
	(void)pool;
	node_put(handle);
}

/* ---- cancel by group: a tag in the node ---------------------------------- */

static void *tp_group_create(void *pool)
{
	(void)pool;
	return malloc(1); /* any unique address */
}

static int tp_submit_group(void *pool, void *group, struct bench_item *item)
{
	return enqueue(pool, item, group, 1) != NULL ? 0 : -1;
}

static void tp_cancel_group(void *pool, void *group)
{
	struct tpool *tp = pool;
	struct node  *n, *next, *dead = NULL;
	size_t        count = 0;

	pthread_mutex_lock(&tp->mu);
	for (n = tp->head; n != NULL; n = next) {
		next = n->next;
		if (n->group != group)
			continue;
		unlink_node(tp, n);
		n->state = NODE_CANCELLED;
		n->next = dead;
		dead = n;
		count++;
	}
	if (count != 0)
		job_finished(tp, count);
	pthread_mutex_unlock(&tp->mu);
	for (n = dead; n != NULL; n = next) { /* free outside the lock */
		next = n->next;
		node_put(n);
	}
}

static void tp_group_destroy(void *pool, void *group)
{
	(void)pool;
	free(group);
}

static const struct bench_peer peer = {
	.name = "textbook",
	.version = "pthread",
	.joins_threads = 1,
	.create = tp_create,
	.submit = tp_submit,
	.wait_idle = tp_wait_idle,
	.shutdown = tp_shutdown,
	.start_waiters = NULL, /* the driver's flag loop */
	.stop_waiters = NULL,
	.waiters_failed = NULL,
	.submit_handle = tp_submit_handle,
	.cancel = tp_cancel,
	.release = tp_release,
	.group_create = tp_group_create,
	.submit_group = tp_submit_group,
	.cancel_group = tp_cancel_group,
	.group_destroy = tp_group_destroy,
};

const struct bench_peer *bench_peer_get(void)
{
	return &peer;
}
