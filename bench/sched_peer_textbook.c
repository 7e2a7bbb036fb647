/*
 * sched_peer_textbook.c: the scheduling pool everyone writes, as a baseline
 * for bench/sched_driver.c (bench/sched_peer.h).
 *
 * One mutex over everything. Ready tasks wait in three FIFO lists, one per
 * priority; workers sleep on one condition variable and take from the
 * highest non-empty list. Delayed tasks wait in a binary min-heap of due
 * times (an array of node pointers, each node knowing its index, so a
 * cancel removes it in O(log n)); one timer thread sleeps in
 * pthread_cond_timedwait (CLOCK_MONOTONIC) until the earliest due time,
 * moves every due node to its ready list and signals a worker. A submit
 * that puts a new earliest node on top signals the timer thread. A node is
 * malloc'ed per task, reference counted between the pool and the handle.
 * No lock-free tricks, no tuning: what a careful programmer writes in an
 * afternoon.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sched_peer.h"

enum { NODE_DELAYED, NODE_READY, NODE_TAKEN, NODE_CANCELLED };

struct node {
	struct node       *next;       /* ready list */
	struct sched_item *item;
	int64_t            due;
	uint64_t           seq;        /* FIFO among equal due times */
	size_t             heap_index; /* while NODE_DELAYED */
	int                state;      /* NODE_*, under the mutex */
	int                prio;       /* 0 low, 1 normal, 2 high */
	atomic_int         refs;       /* pool + handle */
};

struct fifo {
	struct node *head, *tail;
};

struct tbpool {
	pthread_mutex_t mu;
	pthread_cond_t  work;        /* workers: a ready node or stop */
	pthread_cond_t  timer;       /* timer thread: new top or stop */
	struct fifo     ready[3];
	struct node   **heap;        /* min-heap on (due, seq) */
	size_t          heap_len, heap_cap;
	uint64_t        seq;
	bool            stop;
	pthread_t      *threads;     /* workers, then the timer thread */
	unsigned        nthreads, nworkers;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void node_put(struct node *n)
{
	if (atomic_fetch_sub_explicit(&n->refs, 1, memory_order_acq_rel) == 1)
		free(n);
}

/* ---- the heap, under the mutex ------------------------------------------ */

static bool before(const struct node *a, const struct node *b)
{
	return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(struct tbpool *tp, size_t i, struct node *n)
{
	tp->heap[i] = n;
	n->heap_index = i;
}

static void sift_up(struct tbpool *tp, size_t i)
{
	struct node *n = tp->heap[i];

	while (i > 0 && before(n, tp->heap[(i - 1) / 2])) {
		heap_set(tp, i, tp->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(tp, i, n);
}

static void sift_down(struct tbpool *tp, size_t i)
{
	struct node *n = tp->heap[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= tp->heap_len)
			break;
		if (c + 1 < tp->heap_len && before(tp->heap[c + 1], tp->heap[c]))
			c++;
		if (!before(tp->heap[c], n))
			break;
		heap_set(tp, i, tp->heap[c]);
		i = c;
	}
	heap_set(tp, i, n);
}

static int heap_push(struct tbpool *tp, struct node *n)
{
	if (tp->heap_len == tp->heap_cap) {
		size_t        cap = tp->heap_cap ? 2 * tp->heap_cap : 64;
		struct node **h = realloc(tp->heap, cap * sizeof(*h));

		if (h == NULL)
			return -1;
		tp->heap = h;
		tp->heap_cap = cap;
	}
	heap_set(tp, tp->heap_len++, n);
	sift_up(tp, tp->heap_len - 1);
	return 0;
}

static void heap_remove(struct tbpool *tp, size_t i)
{
	struct node *last = tp->heap[--tp->heap_len];

	if (i == tp->heap_len)
		return;
	heap_set(tp, i, last);
	if (i > 0 && before(last, tp->heap[(i - 1) / 2]))
		sift_up(tp, i);
	else
		sift_down(tp, i);
}

/* ---- ready lists, under the mutex --------------------------------------- */

static void make_ready(struct tbpool *tp, struct node *n)
{
	struct fifo *q = &tp->ready[n->prio];

	n->state = NODE_READY;
	n->next = NULL;
	if (q->tail != NULL)
		q->tail->next = n;
	else
		q->head = n;
	q->tail = n;
	pthread_cond_signal(&tp->work);
}

static struct node *take_ready(struct tbpool *tp)
{
	for (int p = 2; p >= 0; p--) {
		struct fifo *q = &tp->ready[p];
		struct node *n = q->head;

		if (n == NULL)
			continue;
		q->head = n->next;
		if (q->head == NULL)
			q->tail = NULL;
		n->state = NODE_TAKEN;
		return n;
	}
	return NULL;
}

/* Unlinks n from its ready list: O(length), only for a cancel of a ready
 * node (the benchmark cancels delayed ones). */
static void unlink_ready(struct tbpool *tp, struct node *n)
{
	struct fifo *q = &tp->ready[n->prio];
	struct node *prev = NULL;

	for (struct node *p = q->head; p != n; p = p->next)
		prev = p;
	if (prev != NULL)
		prev->next = n->next;
	else
		q->head = n->next;
	if (q->tail == n)
		q->tail = prev;
}

/* ---- threads ------------------------------------------------------------ */

static void *worker(void *arg)
{
	struct tbpool *tp = arg;

	pthread_mutex_lock(&tp->mu);
	for (;;) {
		struct node *n = take_ready(tp);

		if (n == NULL) {
			if (tp->stop)
				break;
			pthread_cond_wait(&tp->work, &tp->mu);
			continue;
		}
		pthread_mutex_unlock(&tp->mu);
		n->item->run(n->item);
		node_put(n);
		pthread_mutex_lock(&tp->mu);
	}
	pthread_mutex_unlock(&tp->mu);
	return NULL;
}

static void *timer_main(void *arg)
{
	struct tbpool *tp = arg;

	pthread_mutex_lock(&tp->mu);
	while (!tp->stop) {
		int64_t         now = now_ns();
		struct timespec ts;

		while (tp->heap_len > 0 && tp->heap[0]->due <= now) {
			struct node *n = tp->heap[0];

			heap_remove(tp, 0);
			make_ready(tp, n);
		}
		if (tp->heap_len == 0) {
			pthread_cond_wait(&tp->timer, &tp->mu);
			continue;
		}
		ts.tv_sec = (time_t)(tp->heap[0]->due / 1000000000);
		ts.tv_nsec = (long)(tp->heap[0]->due % 1000000000);
		pthread_cond_timedwait(&tp->timer, &tp->mu, &ts);
	}
	pthread_mutex_unlock(&tp->mu);
	return NULL;
}

/* ---- the interface ------------------------------------------------------ */

static void tb_destroy(void *pool)
{
	struct tbpool *tp = pool;

	pthread_mutex_lock(&tp->mu);
	tp->stop = true;
	pthread_cond_broadcast(&tp->work);
	pthread_cond_signal(&tp->timer);
	pthread_mutex_unlock(&tp->mu);
	for (unsigned i = 0; i < tp->nthreads; i++)
		pthread_join(tp->threads[i], NULL);
	pthread_cond_destroy(&tp->timer);
	pthread_cond_destroy(&tp->work);
	pthread_mutex_destroy(&tp->mu);
	free(tp->heap);
	free(tp->threads);
	free(tp);
}

static int start_threads(struct tbpool *tp, unsigned workers)
{
	for (unsigned i = 0; i <= workers; i++) {
		void *(*fn)(void *) = i < workers ? worker : timer_main;

		if (pthread_create(&tp->threads[i], NULL, fn, tp) != 0)
			return -1;
		tp->nthreads++;
	}
	return 0;
}

static void *tb_create(unsigned workers, size_t capacity, int priorities)
{
	struct tbpool     *tp = calloc(1, sizeof(*tp));
	pthread_condattr_t ca;

	(void)capacity; /* unbounded */
	(void)priorities; /* always on: item->priority */
	if (tp == NULL)
		return NULL;
	tp->threads = calloc(workers + 1, sizeof(*tp->threads));
	if (tp->threads == NULL) {
		free(tp);
		return NULL;
	}
	tp->nworkers = workers;
	pthread_mutex_init(&tp->mu, NULL);
	pthread_cond_init(&tp->work, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&tp->timer, &ca);
	pthread_condattr_destroy(&ca);
	if (start_threads(tp, workers) != 0) {
		tb_destroy(tp);
		return NULL;
	}
	return tp;
}

static struct node *enqueue(struct tbpool *tp, struct sched_item *item,
                            int64_t delay, int refs)
{
	struct node *n = calloc(1, sizeof(*n));

	if (n == NULL)
		return NULL;
	n->item = item;
	n->prio = item->priority + 1;
	atomic_init(&n->refs, refs);
	n->due = delay > 0 ? now_ns() + delay : 0;
	pthread_mutex_lock(&tp->mu);
	n->seq = tp->seq++;
	if (delay <= 0) {
		make_ready(tp, n);
	} else if (heap_push(tp, n) != 0) {
		pthread_mutex_unlock(&tp->mu);
		free(n);
		return NULL;
	} else {
		n->state = NODE_DELAYED;
		if (n->heap_index == 0) /* a new earliest due time */
			pthread_cond_signal(&tp->timer);
	}
	pthread_mutex_unlock(&tp->mu);
	return n;
}

static int tb_submit(void *pool, struct sched_item *item)
{
	return enqueue(pool, item, 0, 1) != NULL ? 0 : -1;
}

static int tb_submit_delayed(void *pool, struct sched_item *item, int64_t delay)
{
	return enqueue(pool, item, delay, 1) != NULL ? 0 : -1;
}

static void *tb_submit_handle(void *pool, struct sched_item *item,
                              int64_t delay)
{
	return enqueue(pool, item, delay, 2);
}

static int tb_cancel(void *pool, void *handle)
{
	struct tbpool *tp = pool;
	struct node   *n = handle;
	int            was;

	pthread_mutex_lock(&tp->mu);
	was = n->state;
	if (was == NODE_DELAYED)
		heap_remove(tp, n->heap_index);
	else if (was == NODE_READY)
		unlink_ready(tp, n);
	if (was == NODE_DELAYED || was == NODE_READY)
		n->state = NODE_CANCELLED;
	pthread_mutex_unlock(&tp->mu);
	if (was != NODE_DELAYED && was != NODE_READY)
		return 0;
	n->item->cancelled(n->item);
	node_put(n); /* the pool's reference */
	return 1;
}

static void tb_release(void *pool, void *handle)
{
	(void)pool;
	node_put(handle);
}

static const struct sched_peer peer = {
	.name = "textbook",
	.version = "pthread",
	.create = tb_create,
	.destroy = tb_destroy,
	.submit = tb_submit,
	.submit_delayed = tb_submit_delayed,
	.on_timer_thread = NULL, /* any thread */
	.submit_handle = tb_submit_handle,
	.cancel = tb_cancel,
	.release = tb_release,
};

const struct sched_peer *sched_peer_get(void)
{
	return &peer;
}
