/*
 * sched_peer_ctpool.c: ctpool behind the scheduling benchmark interface
 * (bench/sched_peer.h).
 *
 * Plain use of the public API: one pool of `workers` threads whose queue
 * holds `capacity` tasks (delayed ones hold a place from submission);
 * ctp_pool_submit with opts.delay for a delayed task, opts.priority for a
 * prioritized one, a done callback that reports a cancelled task;
 * ctp_task_cancel by handle (0: it will never run, and its done(-ECANCELED)
 * has already run). The pool's own timer thread makes delayed tasks due;
 * every call may come from any thread, so on_timer_thread is NULL.
 */
#include <errno.h>
#include <stdio.h>

#include "ctpool.h"
#include "sched_peer.h"

#ifndef BENCH_CTPOOL_VERSION
#define BENCH_CTPOOL_VERSION "unknown"
#endif

static int trampoline(void *arg, ctp_token *token)
{
	struct sched_item *item = arg;

	(void)token;
	item->run(item);
	return 0;
}

/* Exactly once per accepted task: after the run (status 0), or with why it
 * never ran. */
static void done(void *arg, int status)
{
	struct sched_item *item = arg;

	if (status < 0)
		item->cancelled(item);
}

static void *cp_create(unsigned workers, size_t capacity, int priorities)
{
	ctp_pool_opts o = { .threads = workers, .queue_capacity = capacity,
	                    .name = "bench" };
	ctp_pool     *pool;
	int           rc;

	(void)priorities; /* always there: opts.priority */
	rc = ctp_pool_create(&pool, &o);
	if (rc != 0) {
		fprintf(stderr, "ctp_pool_create: %s\n", ctp_strerror(rc));
		return NULL;
	}
	return pool;
}

static void cp_destroy(void *pool)
{
	int rc = ctp_pool_destroy(pool);

	if (rc != 0)
		fprintf(stderr, "ctp_pool_destroy: %s\n", ctp_strerror(rc));
}

static int submit(void *pool, struct sched_item *item, int64_t delay,
                  ctp_task **task)
{
	ctp_task_opts o = {
		.done = done,
		.queue_wait = CTP_FOREVER,
		.delay = delay,
		.priority = item->priority == SCHED_PRIO_LOW ? CTP_PRIORITY_LOW :
		    item->priority == SCHED_PRIO_HIGH ? CTP_PRIORITY_HIGH :
		    CTP_PRIORITY_NORMAL,
	};
	int rc = ctp_pool_submit(pool, trampoline, item, &o, task);

	if (rc != 0)
		fprintf(stderr, "ctp_pool_submit: %s\n", ctp_strerror(rc));
	return rc;
}

static int cp_submit(void *pool, struct sched_item *item)
{
	return submit(pool, item, 0, NULL) == 0 ? 0 : -1;
}

static int cp_submit_delayed(void *pool, struct sched_item *item,
                             int64_t delay)
{
	return submit(pool, item, delay, NULL) == 0 ? 0 : -1;
}

static void *cp_submit_handle(void *pool, struct sched_item *item,
                              int64_t delay)
{
	ctp_task *task;

	return submit(pool, item, delay, &task) == 0 ? task : NULL;
}

static int cp_cancel(void *pool, void *handle)
{
	(void)pool;
	/* 0: never runs, done(-ECANCELED) has returned; -EINPROGRESS or
	 * -EALREADY: too late */
	return ctp_task_cancel(handle) == 0;
}

static void cp_release(void *pool, void *handle)
{
	(void)pool;
	ctp_task_release(handle);
}

static const struct sched_peer peer = {
	.name = "ctpool",
	.version = BENCH_CTPOOL_VERSION,
	.create = cp_create,
	.destroy = cp_destroy,
	.submit = cp_submit,
	.submit_delayed = cp_submit_delayed,
	.on_timer_thread = NULL, /* any thread */
	.submit_handle = cp_submit_handle,
	.cancel = cp_cancel,
	.release = cp_release,
};

const struct sched_peer *sched_peer_get(void)
{
	return &peer;
}
