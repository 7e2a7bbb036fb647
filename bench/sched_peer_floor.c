/*
 * sched_peer_floor.c: no pool at all, the physical floor under the
 * scheduling figures (bench/sched_driver.c, bench/sched_peer.h).
 *
 * - A delayed task: a sleeper thread of its own (one per task in flight,
 *   made on first need and reused) calls clock_nanosleep(CLOCK_MONOTONIC,
 *   TIMER_ABSTIME, due) and runs the task itself on waking: no queue, no
 *   hand-over, just the kernel's timer and one wake-up, with the least
 *   timer slack the kernel allows (PR_SET_TIMERSLACK 1 ns; a thread's
 *   default is 50 us, which the libuv, GLib, asio and textbook timer
 *   threads keep, while ctpool sets 1 us on its own). So late_* is how late
 *   the kernel wakes a sleeper for the same delays, under the same load.
 * - submit: W workers on one mutex + condition variable FIFO (the flood of
 *   the busy mode runs there); on an idle pool the driver's wake figure is
 *   then one pthread_cond_signal to a parked thread (a futex wake).
 * - No cancel and no priority: there is nothing to measure without a pool.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <time.h>

#include "sched_peer.h"

struct job {
	struct job        *next;
	struct sched_item *item;
};

struct sleeper {
	struct sleeper    *next;  /* idle stack */
	struct floorpool  *fp;
	pthread_t          thread;
	sem_t              go;
	struct sched_item *item;  /* NULL: exit */
	int64_t            due;
};

struct floorpool {
	pthread_mutex_t  mu;
	pthread_cond_t   work;
	struct job      *head, *tail;
	bool             stop;
	pthread_t       *workers;
	unsigned         nworkers;
	struct sleeper  *idle;     /* sleepers waiting for a task */
};

static void *worker(void *arg)
{
	struct floorpool *fp = arg;

	pthread_mutex_lock(&fp->mu);
	for (;;) {
		struct job *j = fp->head;

		if (j == NULL) {
			if (fp->stop)
				break;
			pthread_cond_wait(&fp->work, &fp->mu);
			continue;
		}
		fp->head = j->next;
		if (fp->head == NULL)
			fp->tail = NULL;
		pthread_mutex_unlock(&fp->mu);
		j->item->run(j->item);
		free(j);
		pthread_mutex_lock(&fp->mu);
	}
	pthread_mutex_unlock(&fp->mu);
	return NULL;
}

static void *sleeper_main(void *arg)
{
	struct sleeper *s = arg;

	/* the least slack the kernel takes (0 would mean the default) */
	if (prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) != 0)
		perror("prctl(PR_SET_TIMERSLACK)");
	for (;;) {
		struct timespec ts;
		struct sched_item *item;

		while (sem_wait(&s->go) != 0)
			;
		if (s->item == NULL)
			return NULL;
		ts.tv_sec = (time_t)(s->due / 1000000000);
		ts.tv_nsec = (long)(s->due % 1000000000);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts,
		                       NULL) == EINTR)
			;
		item = s->item;
		/* idle again before the run: the run lets the driver submit */
		pthread_mutex_lock(&s->fp->mu);
		s->next = s->fp->idle;
		s->fp->idle = s;
		pthread_mutex_unlock(&s->fp->mu);
		item->run(item);
	}
}

static void fl_destroy(void *pool)
{
	struct floorpool *fp = pool;
	struct sleeper   *s, *next;

	pthread_mutex_lock(&fp->mu);
	fp->stop = true;
	pthread_cond_broadcast(&fp->work);
	pthread_mutex_unlock(&fp->mu);
	for (unsigned i = 0; i < fp->nworkers; i++)
		pthread_join(fp->workers[i], NULL);
	/* every sleeper is idle once the driver destroys the pool */
	for (s = fp->idle; s != NULL; s = next) {
		next = s->next;
		s->item = NULL;
		sem_post(&s->go);
		pthread_join(s->thread, NULL);
		sem_destroy(&s->go);
		free(s);
	}
	pthread_cond_destroy(&fp->work);
	pthread_mutex_destroy(&fp->mu);
	free(fp->workers);
	free(fp);
}

static void *fl_create(unsigned workers, size_t capacity, int priorities)
{
	struct floorpool *fp = calloc(1, sizeof(*fp));

	(void)capacity;
	(void)priorities;
	if (fp == NULL)
		return NULL;
	fp->workers = calloc(workers, sizeof(*fp->workers));
	if (fp->workers == NULL) {
		free(fp);
		return NULL;
	}
	pthread_mutex_init(&fp->mu, NULL);
	pthread_cond_init(&fp->work, NULL);
	for (unsigned i = 0; i < workers; i++) {
		if (pthread_create(&fp->workers[i], NULL, worker, fp) != 0) {
			fl_destroy(fp);
			return NULL;
		}
		fp->nworkers++;
	}
	return fp;
}

static int fl_submit(void *pool, struct sched_item *item)
{
	struct floorpool *fp = pool;
	struct job       *j = malloc(sizeof(*j));

	if (j == NULL)
		return -1;
	j->item = item;
	j->next = NULL;
	pthread_mutex_lock(&fp->mu);
	if (fp->tail != NULL)
		fp->tail->next = j;
	else
		fp->head = j;
	fp->tail = j;
	pthread_cond_signal(&fp->work);
	pthread_mutex_unlock(&fp->mu);
	return 0;
}

static struct sleeper *new_sleeper(struct floorpool *fp)
{
	struct sleeper *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->fp = fp;
	if (sem_init(&s->go, 0, 0) != 0) {
		free(s);
		return NULL;
	}
	if (pthread_create(&s->thread, NULL, sleeper_main, s) != 0) {
		sem_destroy(&s->go);
		free(s);
		return NULL;
	}
	return s;
}

static int fl_submit_delayed(void *pool, struct sched_item *item,
                             int64_t delay)
{
	struct floorpool *fp = pool;
	struct sleeper   *s;
	struct timespec   ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	pthread_mutex_lock(&fp->mu);
	s = fp->idle;
	if (s != NULL)
		fp->idle = s->next;
	pthread_mutex_unlock(&fp->mu);
	if (s == NULL && (s = new_sleeper(fp)) == NULL)
		return -1;
	s->item = item;
	s->due = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + delay;
	sem_post(&s->go);
	return 0;
}

static char version[80];

static const struct sched_peer peer = {
	.name = "floor",
	.version = version,
	.create = fl_create,
	.destroy = fl_destroy,
	.submit = fl_submit,
	.submit_delayed = fl_submit_delayed,
	.why_no_cancel = "floor: no pool, nothing to cancel",
	.why_no_priority = "floor: no pool, no queue to order",
};

const struct sched_peer *sched_peer_get(void)
{
	struct utsname u;

	if (version[0] == '\0')
		snprintf(version, sizeof(version), "linux-%s",
		         uname(&u) == 0 ? u.release : "?");
	return &peer;
}
