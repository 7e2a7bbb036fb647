/*
 * sched_peer_libuv.c: libuv behind the scheduling benchmark interface
 * (bench/sched_peer.h): a uv_timer_t on a loop thread, then uv_queue_work
 * onto libuv's threadpool when it fires.
 *
 * The libuv way: a loop belongs to one thread, so the adapter runs one loop
 * thread (uv_run) and every call from another thread (the driver, the
 * flood's feeder) goes to it through a mutex-protected inbox and
 * uv_async_send, the documented way in. On the loop thread:
 * - submit: uv_queue_work(loop, req, work_cb, after_work_cb).
 * - a delayed task: uv_timer_init + uv_timer_start(timeout, repeat 0); when
 *   it fires, uv_close(timer) and uv_queue_work. libuv timers count whole
 *   milliseconds of loop time (uv_now, the monotonic clock in ms, rounded
 *   down), and a loop's time is read once per iteration: a naive
 *   uv_timer_start(delay_ms) after a stale uv_now can fire early. To never
 *   start before the due time, the caller's thread reads the clock at the
 *   call (due = now + delay, in ns), and the loop thread calls
 *   uv_update_time and starts the timer for ceil(due in ms) - uv_now().
 *   So libuv's lateness includes rounding up to the next whole ms (0-1 ms,
 *   0.5 ms on average for the benchmark's delays, drawn in 1 us steps).
 * - cancel (scenario cancel, on the loop thread): a timer not fired yet is
 *   uv_timer_stop'ed and uv_close'd; the task is reported cancelled from the
 *   close callback, when libuv hands the memory back (next loop
 *   iteration). A fired one is uv_cancel'ed on the threadpool if still
 *   queued there (after_work_cb gets UV_ECANCELED), else too late.
 * - One malloc per task (the request with its timer and work request).
 * - No priorities: the threadpool is one FIFO (see why_no_priority).
 * - The threadpool is process-wide, sized once by UV_THREADPOOL_SIZE, and
 *   its threads are never joined (see bench/peer_libuv.c); the driver makes
 *   one pool per process.
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <uv.h>

#include "sched_peer.h"

enum { MSG_WORK, MSG_DELAY, MSG_CALL, MSG_STOP };

struct lpool;

/* A task (or a message: MSG_CALL, MSG_STOP). Fields below `next` belong
 * to the loop thread once the request is in the inbox. */
struct lreq {
	struct lreq       *next;      /* inbox, under lpool.mu */
	int                kind;
	struct sched_item *item;
	int64_t            due;       /* MSG_DELAY: ns, monotonic clock */
	void             (*fn)(void *);
	void              *arg;
	sem_t             *called;    /* MSG_CALL: posted after fn */
	struct lpool      *p;
	uv_timer_t         timer;
	uv_work_t          work;
	int                refs;      /* timer close, work done, handle */
	bool               fired;     /* timer fired: work queued */
};

struct lpool {
	uv_loop_t       loop;
	uv_async_t      async;
	pthread_mutex_t mu;           /* the inbox */
	struct lreq    *head, *tail;
	pthread_t       thread;
};

static void req_put(struct lreq *r)
{
	if (--r->refs == 0)
		free(r);
}

static void work_cb(uv_work_t *w)
{
	struct lreq *r = w->data;

	r->item->run(r->item);
}

static void after_work_cb(uv_work_t *w, int status)
{
	struct lreq *r = w->data;

	if (status == UV_ECANCELED)
		r->item->cancelled(r->item);
	req_put(r);
}

static void queue_work(struct lpool *p, struct lreq *r)
{
	int rc;

	r->work.data = r;
	rc = uv_queue_work(&p->loop, &r->work, work_cb, after_work_cb);
	if (rc != 0) { /* only for a NULL work_cb: cannot happen */
		fprintf(stderr, "uv_queue_work: %s\n", uv_strerror(rc));
		abort();
	}
}

static void timer_closed(uv_handle_t *h)
{
	struct lreq *r = h->data;

	if (!r->fired) /* cancelled: the work never comes either */
		r->item->cancelled(r->item);
	r->refs -= r->fired ? 1 : 2;
	if (r->refs == 0)
		free(r);
}

static void timer_cb(uv_timer_t *t)
{
	struct lreq *r = t->data;

	r->fired = true;
	uv_close((uv_handle_t *)&r->timer, timer_closed);
	queue_work(r->p, r);
}

/* On the loop thread: a timer that fires at r->due or later, never before. */
static void start_timer(struct lpool *p, struct lreq *r)
{
	uint64_t now_ms, due_ms = ((uint64_t)r->due + 999999) / 1000000;

	uv_timer_init(&p->loop, &r->timer);
	r->timer.data = r;
	uv_update_time(&p->loop);
	now_ms = uv_now(&p->loop);
	uv_timer_start(&r->timer, timer_cb, due_ms > now_ms ? due_ms - now_ms : 0,
	               0);
}

static void inbox_cb(uv_async_t *a)
{
	struct lpool *p = a->data;
	struct lreq  *r, *next;

	pthread_mutex_lock(&p->mu);
	r = p->head;
	p->head = p->tail = NULL;
	pthread_mutex_unlock(&p->mu);
	for (; r != NULL; r = next) {
		next = r->next;
		if (r->kind == MSG_WORK) {
			queue_work(p, r);
		} else if (r->kind == MSG_DELAY) {
			start_timer(p, r);
		} else if (r->kind == MSG_CALL) {
			r->fn(r->arg);
			sem_post(r->called);
		} else {
			uv_close((uv_handle_t *)&p->async, NULL);
		}
	}
}

static void post(struct lpool *p, struct lreq *r)
{
	r->next = NULL;
	pthread_mutex_lock(&p->mu);
	if (p->tail != NULL)
		p->tail->next = r;
	else
		p->head = r;
	p->tail = r;
	pthread_mutex_unlock(&p->mu);
	uv_async_send(&p->async);
}

static void *loop_main(void *arg)
{
	struct lpool *p = arg;

	uv_run(&p->loop, UV_RUN_DEFAULT); /* until the async is closed */
	return NULL;
}

static void noop_work(uv_work_t *w)
{
	(void)w;
}

static void noop_after(uv_work_t *w, int status)
{
	(void)w;
	(void)status;
}

/* The first request of the process starts every threadpool thread. */
static int warm_up(uv_loop_t *loop, unsigned workers)
{
	char      buf[16];
	uv_work_t w;

	snprintf(buf, sizeof(buf), "%u", workers);
	setenv("UV_THREADPOOL_SIZE", buf, 1);
	if (uv_queue_work(loop, &w, noop_work, noop_after) != 0)
		return -1;
	return uv_run(loop, UV_RUN_DEFAULT) == 0 ? 0 : -1;
}

static void *lv_create(unsigned workers, size_t capacity, int priorities)
{
	struct lpool *p = calloc(1, sizeof(*p));

	(void)capacity;   /* unbounded */
	(void)priorities; /* none */
	if (p == NULL || uv_loop_init(&p->loop) != 0) {
		free(p);
		return NULL;
	}
	if (warm_up(&p->loop, workers) != 0 ||
	    uv_async_init(&p->loop, &p->async, inbox_cb) != 0) {
		uv_loop_close(&p->loop);
		free(p);
		return NULL;
	}
	p->async.data = p;
	pthread_mutex_init(&p->mu, NULL);
	if (pthread_create(&p->thread, NULL, loop_main, p) != 0) {
		fprintf(stderr, "libuv: pthread_create failed\n");
		uv_close((uv_handle_t *)&p->async, NULL);
		uv_run(&p->loop, UV_RUN_DEFAULT); /* finishes the close */
		uv_loop_close(&p->loop);
		pthread_mutex_destroy(&p->mu);
		free(p);
		return NULL;
	}
	return p;
}

static void lv_destroy(void *pool)
{
	struct lpool *p = pool;
	struct lreq   stop = { .kind = MSG_STOP };
	int           rc;

	post(p, &stop);
	pthread_join(p->thread, NULL);
	rc = uv_loop_close(&p->loop);
	if (rc != 0)
		fprintf(stderr, "uv_loop_close: %s\n", uv_strerror(rc));
	pthread_mutex_destroy(&p->mu);
	free(p);
}

static struct lreq *new_req(struct lpool *p, int kind,
                            struct sched_item *item, int refs)
{
	struct lreq *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->kind = kind;
	r->item = item;
	r->p = p;
	r->refs = refs;
	return r;
}

static int lv_submit(void *pool, struct sched_item *item)
{
	struct lreq *r = new_req(pool, MSG_WORK, item, 1);

	if (r == NULL)
		return -1;
	post(pool, r);
	return 0;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int lv_submit_delayed(void *pool, struct sched_item *item,
                             int64_t delay)
{
	struct lreq *r = new_req(pool, MSG_DELAY, item, 2);

	if (r == NULL)
		return -1;
	r->due = now_ns() + delay;
	post(pool, r);
	return 0;
}

static void lv_on_timer_thread(void *pool, void (*fn)(void *), void *arg)
{
	sem_t       called;
	struct lreq r = { .kind = MSG_CALL, .fn = fn, .arg = arg,
	                  .called = &called };

	sem_init(&called, 0, 0);
	post(pool, &r);
	while (sem_wait(&called) != 0)
		;
	sem_destroy(&called);
}

/* On the loop thread (inside on_timer_thread). */
static void *lv_submit_handle(void *pool, struct sched_item *item,
                              int64_t delay)
{
	struct lreq *r = new_req(pool, MSG_DELAY, item, 3);

	if (r == NULL)
		return NULL;
	r->due = now_ns() + delay;
	start_timer(pool, r);
	return r;
}

static int lv_cancel(void *pool, void *handle)
{
	struct lreq *r = handle;

	(void)pool;
	if (!r->fired) {
		if (uv_is_closing((uv_handle_t *)&r->timer))
			return 0; /* cancelled before */
		uv_timer_stop(&r->timer);
		uv_close((uv_handle_t *)&r->timer, timer_closed);
		return 1;
	}
	return uv_cancel((uv_req_t *)&r->work) == 0;
}

static void lv_release(void *pool, void *handle)
{
	(void)pool;
	req_put(handle);
}

static const struct sched_peer peer = {
	.name = "libuv",
	.version = NULL, /* set by sched_peer_get */
	.create = lv_create,
	.destroy = lv_destroy,
	.submit = lv_submit,
	.submit_delayed = lv_submit_delayed,
	.on_timer_thread = lv_on_timer_thread,
	.submit_handle = lv_submit_handle,
	.cancel = lv_cancel,
	.release = lv_release,
	.why_no_priority = "libuv's threadpool is one FIFO queue: "
	    "uv_queue_work has no priority",
};

const struct sched_peer *sched_peer_get(void)
{
	static struct sched_peer p;

	if (p.name == NULL) {
		p = peer;
		p.version = uv_version_string();
	}
	return &p;
}
