/*
 * peer_ctpool.c: ctpool behind the benchmark interface (bench/peer.h).
 *
 * Plain use of the public API, nothing tuned for the benchmark: a pool of
 * `workers` threads whose queue holds `capacity` tasks, submits that wait for
 * room (queue_wait = CTP_FOREVER), shutdown with no drain and no grace limit.
 * Busy stop uses ctpool's own cancellable waits (the token fires on
 * shutdown), exactly as bench/bench_stop.c does; it has no flag-loop variant.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctpool.h"
#include "peer.h"

#ifndef BENCH_CTPOOL_VERSION
#define BENCH_CTPOOL_VERSION "unknown"
#endif

#define MAX_WAITERS 64

struct waiter {
	struct cpool    *cp;
	enum bench_wait  how;
	sem_t           *inside;
};

struct cpool {
	ctp_pool     *pool;
	ctp_queue    *queue;                /* BENCH_WAIT_QUEUE: stays empty */
	struct waiter waiters[MAX_WAITERS];
};

/* Waiters whose wait ended for any reason other than the shutdown firing
 * their token; reset by start_waiters. */
static atomic_uint failed;

static int trampoline(void *arg, ctp_token *token)
{
	struct bench_item *item = arg;

	(void)token;
	item->run(item);
	return 0;
}

static const ctp_task_opts wait_for_room = { .queue_wait = CTP_FOREVER };

static void *cp_create(unsigned workers, size_t capacity)
{
	ctp_pool_opts opts = { .threads = workers, .queue_capacity = capacity,
	                       .name = "bench" };
	struct cpool *cp = calloc(1, sizeof(*cp));
	int rc;

	if (cp == NULL)
		return NULL;
	rc = ctp_pool_create(&cp->pool, &opts);
	if (rc != 0) {
		fprintf(stderr, "ctp_pool_create: %s\n", ctp_strerror(rc));
		free(cp);
		return NULL;
	}
	return cp;
}

static int cp_submit(void *pool, void *producer, struct bench_item *item)
{
	struct cpool *cp = pool;
	int rc;

	(void)producer;
	rc = ctp_pool_submit(cp->pool, trampoline, item, &wait_for_room, NULL);
	if (rc != 0) {
		fprintf(stderr, "ctp_pool_submit: %s\n", ctp_strerror(rc));
		return -1;
	}
	return 0;
}

static void cp_wait_idle(void *pool)
{
	struct cpool *cp = pool;

	ctp_pool_wait_idle(cp->pool, CTP_FOREVER);
}

static void cp_shutdown(void *pool)
{
	struct cpool *cp = pool;
	int rc = ctp_pool_shutdown(cp->pool, 0, CTP_FOREVER);

	if (rc != 0)
		fprintf(stderr, "ctp_pool_shutdown: %s\n", ctp_strerror(rc));
	ctp_pool_destroy(cp->pool);
	ctp_queue_destroy(cp->queue);
	free(cp);
}

/* ---- busy stop: the three waits of bench_stop.c ------------------------- */

static int wait_poll(struct waiter *w, ctp_token *token)
{
	int           fd = ctp_token_fd(token);
	struct pollfd p;
	int           n;

	sem_post(w->inside); /* also on failure: the driver must not hang */
	if (fd < 0)
		return fd;
	p.fd = fd;
	p.events = POLLIN;
	do
		n = poll(&p, 1, 10000);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		return n < 0 ? -errno : -ETIMEDOUT;
	return ctp_token_reason(token);
}

static int waiter_task(void *arg, ctp_token *token)
{
	struct waiter *w = arg;
	void          *item;
	int            rc;

	switch (w->how) {
	case BENCH_WAIT_SLEEP:
		sem_post(w->inside);
		rc = ctp_token_sleep(token, CTP_SEC(10));
		break;
	case BENCH_WAIT_POLL:
		rc = wait_poll(w, token);
		break;
	case BENCH_WAIT_QUEUE:
		sem_post(w->inside);
		rc = ctp_queue_pop(w->cp->queue, &item, token, CTP_SEC(10));
		break;
	default:
		sem_post(w->inside);
		rc = -EINVAL;
		break;
	}
	/* the wait must have ended because the shutdown fired the token */
	if (rc != -ESHUTDOWN || ctp_token_reason(token) != -ESHUTDOWN)
		atomic_fetch_add(&failed, 1);
	return rc;
}

static int cp_start_waiters(void *pool, unsigned n, enum bench_wait how,
                            sem_t *inside)
{
	struct cpool *cp = pool;

	if (how == BENCH_WAIT_FLAG || n > MAX_WAITERS)
		return -1; /* ctpool's tasks wait on their token, not a flag */
	atomic_store(&failed, 0);
	if (how == BENCH_WAIT_QUEUE && cp->queue == NULL &&
	    ctp_queue_create(&cp->queue, 4) != 0)
		return -1;
	for (unsigned i = 0; i < n; i++) {
		struct waiter *w = &cp->waiters[i];

		w->cp = cp;
		w->how = how;
		w->inside = inside;
		if (ctp_pool_submit(cp->pool, waiter_task, w, &wait_for_room,
		                    NULL) != 0)
			return -1;
	}
	return 0;
}

/* The shutdown fires every running task's token with -ESHUTDOWN and joins. */
static void cp_stop_waiters(void *pool)
{
	cp_shutdown(pool);
}

static unsigned cp_waiters_failed(void)
{
	return atomic_load(&failed);
}

/* ---- cancel by handle ---------------------------------------------------- */

static void *cp_submit_handle(void *pool, struct bench_item *item)
{
	struct cpool *cp = pool;
	ctp_task     *task;

	if (ctp_pool_submit(cp->pool, trampoline, item, &wait_for_room,
	                    &task) != 0)
		return NULL;
	return task;
}

static int cp_cancel(void *pool, void *handle)
{
	(void)pool;
	return ctp_task_cancel(handle) == 0 ? 1 : 0;
}

static void cp_release(void *pool, void *handle)
{
	(void)pool;
	ctp_task_release(handle);
}

/* ---- cancel by group: a parent token ------------------------------------- */

static void *cp_group_create(void *pool)
{
	ctp_token *tok;

	(void)pool;
	return ctp_token_create(&tok, NULL) == 0 ? tok : NULL;
}

static int cp_submit_group(void *pool, void *group, struct bench_item *item)
{
	struct cpool *cp = pool;
	ctp_task_opts o = { .queue_wait = CTP_FOREVER, .parent = group };

	return ctp_pool_submit(cp->pool, trampoline, item, &o, NULL) == 0 ?
	    0 : -1;
}

static void cp_cancel_group(void *pool, void *group)
{
	(void)pool;
	ctp_token_cancel(group);
}

static void cp_group_destroy(void *pool, void *group)
{
	(void)pool;
	ctp_token_release(group);
}

static const struct bench_peer peer = {
	.name = "ctpool",
	.version = BENCH_CTPOOL_VERSION,
	.joins_threads = 1,
	.create = cp_create,
	.submit = cp_submit,
	.wait_idle = cp_wait_idle,
	.shutdown = cp_shutdown,
	.start_waiters = cp_start_waiters,
	.stop_waiters = cp_stop_waiters,
	.waiters_failed = cp_waiters_failed,
	.submit_handle = cp_submit_handle,
	.cancel = cp_cancel,
	.release = cp_release,
	.group_create = cp_group_create,
	.submit_group = cp_submit_group,
	.cancel_group = cp_cancel_group,
	.group_destroy = cp_group_destroy,
};

const struct bench_peer *bench_peer_get(void)
{
	return &peer;
}
