/*
 * platform.c: Linux specifics kept in one place.
 *
 * Design notes
 *   - Every wait in the library is a futex wait with an absolute
 *     CLOCK_MONOTONIC deadline (FUTEX_WAIT_BITSET, which takes an absolute
 *     time, with FUTEX_BITSET_MATCH_ANY in val3), so a wait interrupted and
 *     restarted never stretches its deadline.
 *   - ck_ec is given these futexes through ctp__ec_mode, in multi-producer
 *     mode: producers, consumers, close and shutdown all bump the counts.
 *   - Deadlines saturate at INT64_MAX nanoseconds (about 292 years), so no
 *     duration up to INT64_MAX overflows.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* The library's thread-local state (internal.h): defined here, the lowest
 * layer, because every file above reads it. */
__thread struct ctp__tls ctp__tls __attribute__((tls_model("initial-exec")));

#define NSEC 1000000000LL

int64_t ctp__now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for this clock */
	return (int64_t)ts.tv_sec * NSEC + ts.tv_nsec;
}

bool ctp__duration_ok(int64_t ns)
{
	return ns >= 0 || ns == CTP_FOREVER;
}

bool ctp__deadline(int64_t ns, struct timespec *abs)
{
	int64_t now, at;

	if (ns == CTP_FOREVER)
		return false;
	now = ctp__now_ns();
	at = ns > INT64_MAX - now ? INT64_MAX : now + ns;
	abs->tv_sec = at / NSEC;
	abs->tv_nsec = at % NSEC;
	return true;
}

/* op: FUTEX_PRIVATE_FLAG for a word of this process, 0 for a shared one */
static int futex_wait_op(_Atomic uint32_t *word, uint32_t expected,
                         const struct timespec *abs, int op)
{
	long r;

	r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET | op,
	    expected, abs, NULL, FUTEX_BITSET_MATCH_ANY);
	if (r == 0 || errno == EAGAIN)
		return 0;
	return errno == ETIMEDOUT ? -ETIMEDOUT : -EINTR;
}

int ctp__futex_wait(_Atomic uint32_t *word, uint32_t expected,
                    const struct timespec *abs)
{
	return futex_wait_op(word, expected, abs, FUTEX_PRIVATE_FLAG);
}

void ctp__futex_wake(_Atomic uint32_t *word, int count)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG,
	    count, NULL, NULL, 0);
}

/* Shared futexes: for a word in memory shared with another process (an
 * isolated task's token, proc.c), which a private futex cannot reach. */
int ctp__futex_wait_shared(_Atomic uint32_t *word, uint32_t expected,
                           const struct timespec *abs)
{
	return futex_wait_op(word, expected, abs, 0);
}

void ctp__futex_wake_shared(_Atomic uint32_t *word, int count)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* glibc's adaptive mutex: a contended lock is tried again between pauses
 * a bounded number of times before the caller sleeps (glibc tunes the
 * count per mutex from the spins its last takings needed, from 10 up to
 * glibc.pthread.mutex_spin_count, 100 by default: at most about 4 us
 * here, at 40 ns a pause). The plain kind sleeps at once, and the unlock
 * then makes a futex call too: with critical sections a few dozen
 * instructions long, the waiter's futex_wait mostly found the lock free
 * again, so the two system calls bought nothing. A holder preempted in
 * its critical section costs a waiter one bounded spin, then the same
 * sleep. The figures are at the callers (pool.c, pool_alloc; token.c,
 * ext_init). */
void ctp__mutex_init_spin(pthread_mutex_t *m)
{
	pthread_mutexattr_t ma;

	pthread_mutexattr_init(&ma);
	(void)pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
	pthread_mutex_init(m, &ma);
	pthread_mutexattr_destroy(&ma);
}

/* ---- ck_ec operations --------------------------------------------------- */

static int ec_gettime(const struct ck_ec_ops *ops, struct timespec *out)
{
	(void)ops;
	return clock_gettime(CLOCK_MONOTONIC, out);
}

static void ec_wait32(const struct ck_ec_wait_state *st, const uint32_t *addr,
                      uint32_t expected, const struct timespec *deadline)
{
	(void)st;
	/* ck re-checks the counter after we return: any early return is fine */
	syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG,
	    expected, deadline, NULL, FUTEX_BITSET_MATCH_ANY);
}

static void ec_wait64(const struct ck_ec_wait_state *st, const uint64_t *addr,
                      uint64_t expected, const struct timespec *deadline)
{
	/* Little endian: the low half is at addr (ck's documented contract). */
	ec_wait32(st, (const uint32_t *)addr, (uint32_t)expected, deadline);
}

static void ec_wake32(const struct ck_ec_ops *ops, const uint32_t *addr)
{
	(void)ops;
	syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX,
	    NULL, NULL, 0);
}

static void ec_wake64(const struct ck_ec_ops *ops, const uint64_t *addr)
{
	ec_wake32(ops, (const uint32_t *)addr);
}

static const struct ck_ec_ops ec_ops = {
	.gettime = ec_gettime,
	.wait32 = ec_wait32,
	.wait64 = ec_wait64,
	.wake32 = ec_wake32,
	.wake64 = ec_wake64,
};

const struct ck_ec_mode ctp__ec_mode = {
	.ops = &ec_ops,
	.single_producer = false,
};

/* ---- fork --------------------------------------------------------------- */

_Atomic uint32_t ctp__fork_gen;

static void on_fork_child(void)
{
	/* the child has one thread now: relaxed is enough */
	atomic_fetch_add_explicit(&ctp__fork_gen, 1, memory_order_relaxed);
}

__attribute__((constructor)) static void register_fork_handler(void)
{
	/* cannot fail but for ENOMEM at load time; then a child's calls on
	 * objects from before the fork are not caught */
	(void)pthread_atfork(NULL, NULL, on_fork_child);
}

/* ---- threads ------------------------------------------------------------ */

void ctp__set_thread_name(const char *prefix, const char *suffix)
{
	char name[16]; /* the kernel's TASK_COMM_LEN, with the NUL */

	/* snprintf cuts to 15 characters; a failed rename is harmless */
	snprintf(name, sizeof(name), "%s-%s", prefix, suffix);
	pthread_setname_np(pthread_self(), name);
}

/* ---- schedule perturbation (test builds only) --------------------------- */

#ifdef CTP_PERTURB
#include <sched.h>
#include <stdlib.h>

/* Set once from the environment; read-only afterwards. */
static pthread_once_t perturb_once = PTHREAD_ONCE_INIT;
static uint64_t perturb_seed;
static unsigned perturb_rate; /* act at 1 point in `rate`; 0 = never */
static __thread uint64_t perturb_state;
/* threads seeded so far: relaxed, only each number's uniqueness matters */
static _Atomic uint64_t perturb_threads;

static void perturb_init(void)
{
	const char *seed = getenv("CTP_PERTURB_SEED");
	const char *rate = getenv("CTP_PERTURB_RATE");

	perturb_seed = seed != NULL ? strtoull(seed, NULL, 0) : 1;
	perturb_rate = rate != NULL ? (unsigned)strtoul(rate, NULL, 0) : 8;
}

void ctp__perturb(void)
{
	uint64_t x;

	pthread_once(&perturb_once, perturb_init);
	if (perturb_rate == 0)
		return;
	if (perturb_state == 0) {
		/* per thread: the seed and the thread's number in this
		 * process (splitmix64). Not pthread_self(): a pool created
		 * after another one was joined reuses its threads' ids, so
		 * a stress loop of fresh pools replayed the same pauses in
		 * every round. */
		uint64_t z = perturb_seed + 0x9e3779b97f4a7c15ull *
		    (atomic_fetch_add_explicit(&perturb_threads, 1,
		    memory_order_relaxed) + 1);

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		perturb_state = (z ^ (z >> 31)) | 1;
	}
	x = perturb_state; /* xorshift64 */
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	perturb_state = x;
	if (x % perturb_rate != 0)
		return;
	switch ((x >> 40) % 4) {
	case 0:
	case 1:
		sched_yield();
		break;
	default: {
		struct timespec ts = { 0, (long)((x >> 20) % 50000) };

		nanosleep(&ts, NULL); /* up to 50 us */
		break;
	}
	}
}
#endif

/* ---- version and errors ------------------------------------------------- */

unsigned ctp_version(void)
{
	return CTP_VERSION_NUM;
}

const char *ctp_strerror(int err)
{
	switch (err) {
	case 0:             return "success";
	case -EINVAL:       return "invalid argument";
	case -ENOMEM:       return "out of memory";
	case -EAGAIN:       return "queue full or resource temporarily unavailable";
	case -ESHUTDOWN:    return "pool or queue is shut down";
	case -ECANCELED:    return "cancelled";
	case -ETIMEDOUT:    return "timed out";
	case -EDEADLK:      return "would wait for itself (deadlock)";
	case -EINPROGRESS:  return "task is running; its token fired";
	case -EALREADY:     return "already finished or already fired";
	case -ECHILD:       return "object made before fork(): unusable in the child";
	case -EMFILE:       return "too many open files in this process";
	case -ENFILE:       return "too many open files in the system";
	case -ENOTSUP:      return "pool has no worker processes";
	case -EMSGSIZE:     return "isolated task input or output above max_io";
	case -EOWNERDEAD:   return "isolated task's process died";
	case INT_MIN:       return "unknown error"; /* -INT_MIN overflows */
	default:            return strerror(err < 0 ? -err : err);
	}
}
