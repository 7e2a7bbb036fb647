/*
 * Small helpers shared by the tests: a monotonic clock, semaphores that fail
 * loudly, and a thread spawner. Tests order events with these (never with
 * sleeps) and call cmocka's assert_* only on the test's own thread.
 */
#ifndef CTP_TESTUTIL_H
#define CTP_TESTUTIL_H

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static inline int64_t tu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void tu_sem_init(sem_t *s, unsigned v)
{
	if (sem_init(s, 0, v) != 0)
		abort();
}

static inline void tu_sem_post(sem_t *s)
{
	if (sem_post(s) != 0)
		abort();
}

/* Waits for s; aborts after 30 s so a broken test fails instead of hanging. */
static inline void tu_sem_wait(sem_t *s)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	while (sem_timedwait(s, &ts) != 0) {
		if (errno != EINTR)
			abort();
	}
}

static inline pthread_t tu_spawn(void *(*fn)(void *), void *arg)
{
	pthread_t t;

	if (pthread_create(&t, NULL, fn, arg) != 0)
		abort();
	return t;
}

static inline void tu_join(pthread_t t)
{
	if (pthread_join(t, NULL) != 0)
		abort();
}

#endif /* CTP_TESTUTIL_H */
