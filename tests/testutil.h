/*
 * Small helpers shared by the tests: a monotonic clock, semaphores that fail
 * loudly, a thread spawner, and a census of the process's threads. Tests
 * order events with these (never with sleeps) and call cmocka's assert_*
 * only on the test's own thread.
 */
#ifndef CTP_TESTUTIL_H
#define CTP_TESTUTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline int64_t tu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* xorshift32: a deterministic sequence, the same on every run (seed != 0). */
static inline uint32_t tu_rng_next(uint32_t *s)
{
	uint32_t x = *s;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

/* Waits up to bound_ns for child pid; kills it if it hangs. Its wait
 * status, or -1. (A bounded poll: waitpid has no timeout.) */
static inline int tu_reap(pid_t pid, int64_t bound_ns)
{
	struct timespec ts;
	int64_t limit;
	int ws = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	limit = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + bound_ns;
	for (;;) {
		pid_t w = waitpid(pid, &ws, WNOHANG);

		if (w == pid)
			return ws;
		if (w < 0 && errno != EINTR)
			return -1;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec > limit) {
			kill(pid, SIGKILL);
			(void)waitpid(pid, &ws, 0);
			return -1;
		}
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
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

/* Spins until *p >= v: `tight` iterations of a tight spin first (so a
 * thread waiting to line up a race notices at once), then yields so an
 * oversubscribed machine (sanitizers, two CPUs) still makes progress.
 * Aborts after 30 s, like tu_sem_wait, so a lost event fails the run
 * instead of hanging it. */
static inline void tu_spin_until_ge(atomic_int *p, int v, unsigned tight)
{
	int64_t  limit = 0;
	unsigned i = 0;

	while (atomic_load_explicit(p, memory_order_acquire) < v) {
		if (++i < tight) {
			tu_cpu_relax();
			continue;
		}
		sched_yield();
		if ((i & 1023) == 0) {
			int64_t now = tu_now_ns();

			if (limit == 0) {
				limit = now + 30 * (int64_t)1000000000;
			} else if (now > limit) {
				fprintf(stderr, "spin_until_ge: stuck at %d < %d\n",
				        atomic_load(p), v);
				abort();
			}
		}
	}
}

/* Burns n short pauses: jitter that shifts one side of a race. */
static inline void tu_delay_loop(unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		tu_cpu_relax();
}

/* ---- the threads of this process ------------------------------------------
 *
 * pthread_join returns when the kernel clears the thread's id, early in the
 * thread's exit (when it lets go of the memory map); the thread leaves
 * /proc/self/task only at the end of its exit. So a count taken right after
 * a join, or at the start of a test that follows one, may include a thread
 * that is already gone as far as any code is concerned. These helpers count
 * live threads only: listed, not a zombie, still holding the memory map (a
 * leaving thread shows vsize 0 in its stat from the moment its joiner can
 * wake), and they keep the thread ids, so that a test checks that every
 * thread it started is gone rather than comparing two counts that a thread
 * of an earlier test (leaving, or abandoned on purpose and exiting on its
 * own) can shift. They poll the kernel; they order nothing. */

#define TU_MAX_TIDS 512

typedef struct tu_threads {
	int   n;                  /* live threads seen; -1: /proc unreadable */
	int   kept;               /* ids kept in tid[] (all, unless > max) */
	pid_t tid[TU_MAX_TIDS];
} tu_threads;

/* 1 if thread tid of this process is live, 0 if it is leaving or gone.
 * name (16 bytes) and state get its comm and scheduler state if asked. */
static inline int tu_thread_info(pid_t tid, char *name, char *state)
{
	char          path[64], buf[1024], *lp, *rp, st = '?';
	unsigned long vsize = 1;
	ssize_t       n;
	int           fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	lp = strchr(buf, '(');
	rp = strrchr(buf, ')');
	if (lp == NULL || rp == NULL || rp < lp)
		return 1; /* unreadable: count it, never hide one */
	if (name != NULL) {
		size_t len = (size_t)(rp - lp - 1);

		len = len > 15 ? 15 : len;
		memcpy(name, lp + 1, len);
		name[len] = '\0';
	}
	/* fields 3 (state) and 23 (vsize) of proc(5) */
	if (sscanf(rp + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
	           "%*u %*u %*d %*d %*d %*d %*d %*d %*u %lu", &st,
	           &vsize) != 2)
		vsize = 1;
	if (state != NULL)
		*state = st;
	return st != 'Z' && st != 'X' && st != 'x' && vsize != 0;
}

/* The system call thread tid of this process is in, and its first three
 * arguments (/proc/self/task/TID/syscall): 1 if it is in one, 0 if not
 * (running, or a state the kernel shows otherwise), -1 if the file cannot
 * be read (the thread is gone). Polls the kernel; it orders nothing. */
static inline int tu_thread_syscall(pid_t tid, long *nr, unsigned long a[3])
{
	char    path[64], buf[256];
	ssize_t n;
	int     fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return sscanf(buf, "%ld %lx %lx %lx", nr, &a[0], &a[1], &a[2]) == 4;
}

/* Lists the live threads into s; returns their number (-1: unknown).
 * *leaving (if asked) gets the number of listed threads that are not. */
static inline int tu_threads_scan(tu_threads *s, int *leaving)
{
	DIR           *d = opendir("/proc/self/task");
	struct dirent *e;
	int            out = 0;

	s->n = 0;
	s->kept = 0;
	if (d == NULL) {
		s->n = -1;
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		pid_t tid;

		if (e->d_name[0] == '.')
			continue;
		tid = (pid_t)atoi(e->d_name);
		if (!tu_thread_info(tid, NULL, NULL)) {
			out++;
			continue;
		}
		if (s->kept < TU_MAX_TIDS)
			s->tid[s->kept++] = tid;
		s->n++;
	}
	closedir(d);
	if (leaving != NULL)
		*leaving = out;
	return s->n;
}

/* A test's starting point: waits (bounded, 2 s) until no thread is leaving
 * and two scans 2 ms apart agree, so threads of earlier tests that were
 * joined or are known to have exited are not in it. Returns base->n. */
static inline int tu_threads_baseline(tu_threads *base)
{
	int64_t limit = tu_now_ns() + 2000000000;
	int     prev = -2, leaving = 0;

	for (;;) {
		struct timespec ms2 = { 0, 2000000 };
		int             n = tu_threads_scan(base, &leaving);

		if (n < 0 || (n == prev && leaving == 0) ||
		    tu_now_ns() > limit)
			return n;
		prev = leaving == 0 ? n : -2;
		nanosleep(&ms2, NULL);
	}
}

static inline int tu_threads_has(const tu_threads *s, pid_t tid)
{
	for (int i = 0; i < s->kept; i++)
		if (s->tid[i] == tid)
			return 1;
	return 0;
}

/* Waits, bounded by bound_ns, until every live thread is one of base's:
 * each thread started since is gone (a joined one may take a moment to
 * leave). Returns how many are still there (0: back to the baseline) and
 * describes them in why ("tid name state; ..."). *now gets the live count.
 * Strict: a thread still live after the bound is reported, whatever it
 * is. */
static inline int tu_threads_back_to(const tu_threads *base, int64_t bound_ns,
                                     int *now, char *why, size_t len)
{
	int64_t    limit = tu_now_ns() + bound_ns;
	tu_threads cur;
	int        extra;

	if (len > 0)
		why[0] = '\0';
	for (;;) {
		struct timespec ms = { 0, 1000000 };

		extra = 0;
		if (tu_threads_scan(&cur, NULL) < 0 || base->n < 0) {
			extra = -1;
			break;
		}
		if (base->kept < base->n || cur.kept < cur.n) {
			/* too many to list: compare the counts */
			extra = cur.n > base->n ? cur.n - base->n : 0;
		} else {
			for (int i = 0; i < cur.kept; i++)
				extra += !tu_threads_has(base, cur.tid[i]);
		}
		if (extra == 0 || tu_now_ns() > limit)
			break;
		nanosleep(&ms, NULL);
	}
	if (now != NULL)
		*now = cur.n;
	for (int i = 0, used = 0; extra > 0 && i < cur.kept; i++) {
		char name[16] = "?", st = '?';

		if (tu_threads_has(base, cur.tid[i]) || used + 48 >= (int)len)
			continue;
		if (!tu_thread_info(cur.tid[i], name, &st))
			continue; /* it left just now */
		used += snprintf(why + used, len - (size_t)used, "%s%d '%s' %c",
		                 used > 0 ? "; " : "", (int)cur.tid[i], name, st);
	}
	return extra;
}

#endif /* CTP_TESTUTIL_H */
