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
#include <stdatomic.h>
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

/* Soft check for long loops: counts a failure in the including file's
 * `static int failures` and reports the first few (cmocka's print_error), so
 * a test can clean up and assert `failures == 0` at its end. Only on the
 * test's own thread. */
#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			if (failures++ < 12) {                                \
				print_error("%s:%d: CHECK(%s) failed: ",      \
				            __FILE__, __LINE__, #cond);       \
				print_error(__VA_ARGS__);                     \
				print_error("\n");                            \
			}                                                     \
		}                                                             \
	} while (0)

/* n / CTP_STRESS_SCALE (a divisor, default 1), at least min. */
static inline unsigned long tu_scaled(unsigned long n, unsigned long min)
{
	const char   *s = getenv("CTP_STRESS_SCALE");
	unsigned long div = 1;

	if (s != NULL && *s != '\0') {
		char         *end;
		unsigned long v = strtoul(s, &end, 10);

		if (*end == '\0' && v > 0)
			div = v;
	}
	return n / div > min ? n / div : min;
}

static inline void tu_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Burns n short pauses: jitter that shifts one side of a race. */
static inline void tu_delay_loop(unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		tu_cpu_relax();
}

#endif /* CTP_TESTUTIL_H */
