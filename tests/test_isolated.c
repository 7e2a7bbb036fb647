/*
 * Isolated tasks (include/ctpool.h, "isolated tasks"; the contract's final
 * section, "Isolated tasks: a task that can be killed"), one test per
 * promise.
 *
 * The functions under test run in the pool's worker processes, copies of
 * this program taken at ctp_pool_create: a cmocka assert there would never
 * reach us. They report only through what the contract carries back (their
 * status, their output, how their process ended, the stats) and, to order
 * events, through a pipe made before the pool (g_say, inherited by the fork
 * server and every worker process): a function writes a byte (or its pid)
 * there once it has started, and the test blocks reading it, bounded by
 * poll. Every check runs here, on the test's own thread.
 *
 * Timing appears only as generous upper bounds that tell "woken" from
 * "timed out" or "hung" (BOUND, WOKE), and as the lower bound a kill can
 * never beat (kill_after after the fire). Each test makes its own pool (so
 * its own fork server) and destroys it.
 *
 * Signals: the worker processes are copies of this program taken inside a
 * running test, so cmocka's SIGSEGV/SIGBUS handlers are installed there
 * (one would longjmp into the copy's test runner, which would go on running
 * tests in the worker process), and so are ASan's or TSan's. A function
 * that is meant to die of SIGSEGV resets it to SIG_DFL first. The
 * process_memory case is skipped under ASan and TSan: their
 * shadow mappings already exceed any RLIMIT_AS a test could set, so every
 * allocation in the worker would fail, not only the test's.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures.h"

#if defined(__SANITIZE_ADDRESS__)
#define ISO_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define ISO_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ISO_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define ISO_TSAN 1
#endif
#endif

/* A wake-up that must not wait for kill_after or a 60 s sleep. */
#define WOKE    CTP_SEC(5)
#define CHUNK   (64 * 1024) /* output travels in chunks of up to 64 KiB */
#define MIB     ((size_t)1 << 20)

/* ---- the pipe the functions talk through -------------------------------- */

static int g_say[2] = { -1, -1 }; /* made before each pool: inherited */

static void say_open(void)
{
	assert_int_equal(pipe2(g_say, O_CLOEXEC), 0);
}

static void say_close(void)
{
	close(g_say[0]);
	close(g_say[1]);
	g_say[0] = g_say[1] = -1;
}

/* In a worker process. */
static void say(const void *p, size_t n)
{
	(void)!write(g_say[1], p, n);
}

static void say_started(void)
{
	say("S", 1);
}

/* Reads exactly n bytes, each wait bounded by bound_ns. */
static bool hear(void *buf, size_t n, int64_t bound_ns)
{
	char *p = buf;

	while (n > 0) {
		struct pollfd pf = { .fd = g_say[0], .events = POLLIN };
		ssize_t r;

		if (poll(&pf, 1, (int)(bound_ns / 1000000)) <= 0)
			return false;
		r = read(g_say[0], p, n);
		if (r <= 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

static void heard_started(void)
{
	char c = 0;

	assert_true(hear(&c, 1, BOUND));
	assert_int_equal(c, 'S');
}

/* Nothing more was said. */
static bool quiet(void)
{
	struct pollfd pf = { .fd = g_say[0], .events = POLLIN };

	return poll(&pf, 1, 0) == 0;
}

/* ---- tasks, pools, stats ------------------------------------------------ */

struct job {
	atomic_int      calls;  /* times done ran */
	atomic_int      status; /* what done got */
	_Atomic(void *) arg;    /* the arg done got */
	sem_t           done_sem;
};

static void job_init(struct job *j)
{
	memset(j, 0, sizeof(*j));
	atomic_init(&j->status, UNSET);
	tu_sem_init(&j->done_sem, 0);
}

static void job_fini(struct job *j)
{
	sem_destroy(&j->done_sem);
}

static void job_done(void *arg, int status)
{
	struct job *j = arg;

	atomic_store(&j->arg, arg);
	atomic_store(&j->status, status);
	atomic_fetch_add(&j->calls, 1);
	tu_sem_post(&j->done_sem);
}

static int iso_submit(ctp_pool *pool, ctp_isolated_fn fn, const void *in,
                      size_t len, struct job *j, ctp_task_opts o,
                      ctp_task **t)
{
	o.done = job_done;
	return ctp_pool_submit_isolated(pool, fn, in, len, j, &o, t);
}

/* Waits for t (bounded); asserts done ran once with the same status. */
static int finish(ctp_task *t, struct job *j)
{
	int status = UNSET;

	assert_int_equal(ctp_task_wait(t, BOUND, &status), 0);
	assert_int_equal(atomic_load(&j->calls), 1);
	assert_int_equal(atomic_load(&j->status), status);
	assert_ptr_equal(atomic_load(&j->arg), j);
	return status;
}

static ctp_pool *iso_pool_opts(ctp_pool_opts o)
{
	ctp_pool *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	assert_non_null(pool);
	return pool;
}

static ctp_pool *iso_pool(unsigned threads, unsigned processes,
                          int64_t kill_after)
{
	return iso_pool_opts((ctp_pool_opts){ .threads = threads,
	    .processes = processes, .kill_after = kill_after });
}

/* Polls the stats (bounded) until processes == want: a replacement is
 * made asynchronously (a few ms). Returns the last value seen. */
static unsigned procs_settle(ctp_pool *pool, unsigned want)
{
	int64_t limit = tu_now_ns() + WOKE;
	ctp_stats s;

	for (;;) {
		ctp_pool_stats(pool, &s);
		if (s.processes == want || tu_now_ns() > limit)
			return s.processes;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
}

/* Once idle: every accepted task is accounted for. */
static ctp_stats iso_identity(ctp_pool *pool)
{
	ctp_stats s;

	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_pool_stats(pool, &s);
	assert_int_equal(s.submitted, s.completed + s.cancelled + s.timed_out +
	                 s.dropped + s.killed + s.crashed);
	assert_int_equal(s.queued, 0);
	assert_int_equal(s.running, 0);
	return s;
}

struct counts {
	uint64_t submitted, completed, cancelled, timed_out, dropped, killed,
	         crashed;
};

static void expect_counts(ctp_pool *pool, struct counts c)
{
	ctp_stats s = iso_identity(pool);

	assert_int_equal(s.submitted, c.submitted);
	assert_int_equal(s.completed, c.completed);
	assert_int_equal(s.cancelled, c.cancelled);
	assert_int_equal(s.timed_out, c.timed_out);
	assert_int_equal(s.dropped, c.dropped);
	assert_int_equal(s.killed, c.killed);
	assert_int_equal(s.crashed, c.crashed);
}

static void shutdown_ok(ctp_pool *pool)
{
	assert_int_equal(ctp_pool_shutdown(pool, 0, BOUND), 0);
	assert_int_equal(stats_of(pool).processes, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

static void expect_output(ctp_task *t, const void *want, size_t len)
{
	const void *data = (void *)1;
	size_t      got = (size_t)-1;

	assert_int_equal(ctp_task_output(t, &data, &got), 0);
	assert_int_equal(got, len);
	if (len == 0)
		assert_null(data);
	else
		assert_memory_equal(data, want, len);
}

/* ---- the isolated functions (run in worker processes) ------------------- */

#define ECHO_RET 11

/* Echoes its input; -1000 if in and in_len disagree about emptiness. */
static int fn_echo(const void *in, size_t in_len, ctp_output *out,
                   ctp_token *token)
{
	(void)token;
	if ((in == NULL) != (in_len == 0))
		return -1000;
	if (ctp_output_write(out, in, in_len) != 0)
		return -1001;
	return ECHO_RET;
}

/* Ignores its token for good, at the lowest priority (so that spinning
 * processes do not slow the rest of the run on a machine of two CPUs). */
static void spin_forever(void)
{
	struct sched_param sp = { 0 };

	(void)sched_setscheduler(0, SCHED_IDLE, &sp);
	for (;;)
		tu_cpu_relax();
}

/* Ignores its token. */
static int fn_spin(const void *in, size_t in_len, ctp_output *out,
                   ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	say_started();
	spin_forever();
	return 0;
}

/* Says its pid, then ignores its token. */
static int fn_spin_pid(const void *in, size_t in_len, ctp_output *out,
                       ctp_token *token)
{
	pid_t pid = getpid();

	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	say(&pid, sizeof(pid));
	spin_forever();
	return 0;
}

/* Its pid as output. */
static int fn_getpid(const void *in, size_t in_len, ctp_output *out,
                     ctp_token *token)
{
	pid_t pid = getpid();

	(void)in;
	(void)in_len;
	(void)token;
	return ctp_output_write(out, &pid, sizeof(pid));
}

/* What a cooperative function reports: how its wait ended. */
struct woke {
	int32_t wait;      /* the wait's result */
	int32_t reason;    /* ctp_token_reason afterwards */
	int32_t cancelled; /* ctp_token_cancelled afterwards */
	int32_t extra;     /* variant-specific */
};

static int woke_report(ctp_output *out, ctp_token *token, int wait,
                       int extra)
{
	struct woke w = { wait, ctp_token_reason(token),
	                  ctp_token_cancelled(token), extra };

	if (ctp_output_write(out, &w, sizeof(w)) != 0)
		return -1002;
	return ctp_token_reason(token);
}

/* Sleeps on its token for a minute: returns its reason at once. */
static int fn_sleep(const void *in, size_t in_len, ctp_output *out,
                    ctp_token *token)
{
	(void)in;
	(void)in_len;
	say_started();
	return woke_report(out, token, ctp_token_sleep(token, CTP_SEC(60)), 0);
}

/* poll() on ctp_token_fd for a minute. */
static int fn_poll_fd(const void *in, size_t in_len, ctp_output *out,
                      ctp_token *token)
{
	struct pollfd pf = { .fd = ctp_token_fd(token), .events = POLLIN };
	int r;

	(void)in;
	(void)in_len;
	if (pf.fd < 0)
		return -1003;
	say_started();
	do
		r = poll(&pf, 1, 60000);
	while (r < 0 && errno == EINTR);
	return woke_report(out, token, r, pf.revents);
}

static void watch_writes_pipe(void *arg)
{
	(void)!write((int)(intptr_t)arg, "W", 1);
}

/* A watch on its token writes a pipe it reads, for a minute. */
static int fn_watch(const void *in, size_t in_len, ctp_output *out,
                    ctp_token *token)
{
	struct pollfd pf;
	ctp_watch *w;
	char c = 0;
	int p[2], r;

	(void)in;
	(void)in_len;
	if (pipe(p) != 0)
		return -1004;
	if (ctp_token_watch(token, watch_writes_pipe, (void *)(intptr_t)p[1],
	    &w) != 0)
		return -1005;
	say_started();
	pf = (struct pollfd){ .fd = p[0], .events = POLLIN };
	do
		r = poll(&pf, 1, 60000);
	while (r < 0 && errno == EINTR);
	if (r == 1)
		(void)!read(p[0], &c, 1);
	ctp_token_unwatch(w);
	close(p[0]);
	close(p[1]);
	return woke_report(out, token, r, c);
}

/* ctp_queue_pop with its token on an empty queue of its own, a minute. */
static int fn_queue_pop(const void *in, size_t in_len, ctp_output *out,
                        ctp_token *token)
{
	ctp_queue *q;
	void *item;
	int r;

	(void)in;
	(void)in_len;
	if (ctp_queue_create(&q, 4) != 0)
		return -1006;
	say_started();
	r = ctp_queue_pop(q, &item, token, CTP_SEC(60));
	ctp_queue_destroy(q);
	return woke_report(out, token, r, 0);
}

/* Sleeps on a child of its token, made in the worker process. */
static int fn_child_sleep(const void *in, size_t in_len, ctp_output *out,
                          ctp_token *token)
{
	ctp_token *child;
	int r, reason;

	(void)in;
	(void)in_len;
	if (ctp_token_create(&child, token) != 0)
		return -1012;
	say_started();
	r = ctp_token_sleep(child, CTP_SEC(60));
	reason = ctp_token_reason(child);
	ctp_token_release(child);
	return woke_report(out, token, r, reason);
}

/* Leaves a child of its token behind (never released). */
static int fn_leak_child(const void *in, size_t in_len, ctp_output *out,
                         ctp_token *token)
{
	ctp_token *child;

	(void)in;
	(void)in_len;
	(void)out;
	if (ctp_token_create(&child, token) != 0)
		return -1013;
	return 7;
}

static int fn_segv(const void *in, size_t in_len, ctp_output *out,
                   ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	/* the default action, not cmocka's handler (it would longjmp back
	 * into the test runner of this copy) or a sanitizer's report */
	signal(SIGSEGV, SIG_DFL);
	raise(SIGSEGV);
	return -1007;
}

static int fn_abort(const void *in, size_t in_len, ctp_output *out,
                    ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	abort();
}

static int fn_exit3(const void *in, size_t in_len, ctp_output *out,
                    ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	_exit(3);
}

/* Allocates and touches 1 MiB at a time without checking malloc, as a
 * careless program does: past RLIMIT_AS malloc gives NULL and the write
 * through it faults. 1 if it got 1 GiB (no limit applied). */
static int fn_eat_memory(const void *in, size_t in_len, ctp_output *out,
                         ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	signal(SIGSEGV, SIG_DFL); /* cmocka's handler would catch it */
	signal(SIGBUS, SIG_DFL);
	for (int i = 0; i < 1024; i++) {
		volatile char *p = malloc(MIB);

		for (size_t k = 0; k < MIB; k += 4096)
			p[k] = 1;
	}
	return 1;
}

/* Generates in[0..3] bytes of the pattern seeded by in[4..7], written in
 * pieces of 7777 bytes. */
static unsigned char gen_byte(uint32_t seed, size_t i)
{
	return (unsigned char)((i * 2654435761u + seed) >> 13);
}

static int fn_generate(const void *in, size_t in_len, ctp_output *out,
                       ctp_token *token)
{
	unsigned char piece[7777];
	uint32_t hdr[2];
	size_t len, done = 0;

	(void)token;
	if (in_len != sizeof(hdr))
		return -1008;
	memcpy(hdr, in, sizeof(hdr));
	len = hdr[0];
	while (done < len) {
		size_t n = len - done < sizeof(piece) ? len - done :
		    sizeof(piece);

		for (size_t i = 0; i < n; i++)
			piece[i] = gen_byte(hdr[1], done + i);
		if (ctp_output_write(out, piece, n) != 0)
			return -1009;
		done += n;
	}
	return 12;
}

/* Writes two full chunks and a bit of the pattern, then ignores its token. */
#define PARTIAL_LEN (2 * CHUNK + 100)

static int fn_partial_then_spin(const void *in, size_t in_len,
                                ctp_output *out, ctp_token *token)
{
	static unsigned char buf[PARTIAL_LEN];

	(void)in;
	(void)in_len;
	(void)token;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = gen_byte(7, i);
	if (ctp_output_write(out, buf, sizeof(buf)) != 0)
		return -1010;
	say_started();
	spin_forever();
	return 0;
}

/* With max_io 1000: 600 'a' fit, 600 'b' only 400 of them. */
#define MSG_OK 0x3f

static int fn_overflow(const void *in, size_t in_len, ctp_output *out,
                       ctp_token *token)
{
	char a[600], b[600];
	int ok = 0;

	(void)in;
	(void)in_len;
	(void)token;
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	ok |= (ctp_output_write(NULL, a, 1) == -EINVAL) << 0;
	ok |= (ctp_output_write(out, NULL, 1) == -EINVAL) << 1;
	ok |= (ctp_output_write(out, a, sizeof(a)) == 0) << 2;
	ok |= (ctp_output_write(out, b, sizeof(b)) == -EMSGSIZE) << 3;
	ok |= (ctp_output_write(out, b, 1) == -EMSGSIZE) << 4;
	ok |= (ctp_output_write(out, NULL, 0) == 0) << 5;
	return ok;
}

static int g_at_create = 1; /* 2 in the parent once the pool exists */
static int g_written;       /* written by a function, in its copy */

static int fn_globals(const void *in, size_t in_len, ctp_output *out,
                      ctp_token *token)
{
	int before = g_written;

	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	g_written = 42;
	return g_at_create * 100 + before;
}

/* Cancels its own token, reports, then (in[0] != 0) works on for
 * 300 ms without looking at the token before it returns. */
static int fn_self_cancel(const void *in, size_t in_len, ctp_output *out,
                          ctp_token *token)
{
	int r, linger = in_len > 0 && ((const char *)in)[0] != 0;

	if (linger && ctp_token_fd(token) < 0) /* a linked token too */
		return -1011;
	r = ctp_token_cancel(token);
	if (linger) {
		int64_t end = tu_now_ns() + CTP_MSEC(300);

		while (tu_now_ns() < end)
			nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	}
	(void)woke_report(out, token, r, ctp_token_sleep(token, 0));
	return 5;
}

/* Counts how many functions run at once, across processes, in a shared
 * mapping made before the pool. Each waits (bounded) for the partner of
 * its pair to arrive, so two are in at once whenever two may be. */
struct concurrency {
	atomic_int now, max, arrived, timeouts;
};

static struct concurrency *g_conc;

static int fn_count(const void *in, size_t in_len, ctp_output *out,
                    ctp_token *token)
{
	struct concurrency *c = g_conc;
	int a = atomic_fetch_add(&c->arrived, 1);
	int n = atomic_fetch_add(&c->now, 1) + 1;
	int m = atomic_load(&c->max);
	int64_t limit = tu_now_ns() + CTP_SEC(10);

	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	while (n > m && !atomic_compare_exchange_weak(&c->max, &m, n))
		;
	while (atomic_load(&c->arrived) < (a / 2) * 2 + 2) {
		if (tu_now_ns() > limit) {
			atomic_fetch_add(&c->timeouts, 1);
			break;
		}
		sched_yield();
	}
	atomic_fetch_sub(&c->now, 1);
	return 0;
}

/* ---- processes and descriptors of this test program --------------------- */

struct pinfo {
	pid_t              pid, ppid;
	char               state;
	unsigned long long start; /* starttime: tells a reused pid apart */
};

static bool pinfo_read(pid_t pid, struct pinfo *pi)
{
	char path[64], buf[1024], *rp;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	rp = strrchr(buf, ')');
	if (rp == NULL)
		return false;
	pi->pid = pid;
	/* fields 3 (state), 4 (ppid), 22 (starttime) of proc(5) */
	return sscanf(rp + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
	              "%*u %*u %*d %*d %*d %*d %*d %*d %llu", &pi->state,
	              &pi->ppid, &pi->start) == 3;
}

#define MAX_PROCS 64

/* The processes whose parent is ppid. */
static int children_of(pid_t ppid, struct pinfo *out, int max)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		struct pinfo pi;
		char *end;
		long pid = strtol(e->d_name, &end, 10);

		if (*end != '\0' || pid <= 0 || !pinfo_read((pid_t)pid, &pi))
			continue;
		if (pi.ppid == ppid && n < max)
			out[n++] = pi;
	}
	closedir(d);
	return n;
}

/* Our children made since census_init (the fork server) and theirs (the
 * worker processes). A child left by a failed earlier test is not ours. */
struct census {
	int          n, nold;
	struct pinfo p[MAX_PROCS];
	struct pinfo old[MAX_PROCS];
};

static void census_init(struct census *c)
{
	c->n = 0;
	c->nold = children_of(getpid(), c->old, MAX_PROCS);
}

static bool census_old(const struct census *c, const struct pinfo *pi)
{
	for (int i = 0; i < c->nold; i++)
		if (c->old[i].pid == pi->pid && c->old[i].start == pi->start)
			return true;
	return false;
}

/* Adds what is there now to c (pids already in it are not added again). */
static void census_add(struct census *c)
{
	struct pinfo kids[MAX_PROCS];
	int n = children_of(getpid(), kids, MAX_PROCS);

	for (int i = 0; i < n; i++) {
		struct pinfo sub[MAX_PROCS];
		int k;

		if (census_old(c, &kids[i]))
			continue;
		k = children_of(kids[i].pid, sub, MAX_PROCS);

		for (int j = -1; j < k; j++) {
			const struct pinfo *pi = j < 0 ? &kids[i] : &sub[j];
			bool have = false;

			for (int m = 0; m < c->n; m++)
				have |= c->p[m].pid == pi->pid;
			if (!have && c->n < MAX_PROCS)
				c->p[c->n++] = *pi;
		}
	}
}

/* How many of c's processes still exist (zombies included), plus any
 * child of ours or of them; each described in why. With orphans_ok, a
 * zombie that is no longer ours (its fork server was killed, so init
 * adopted it and reaps it in its own time) does not count. */
static int census_left(const struct census *c, bool orphans_ok, char *why,
                       size_t len)
{
	struct pinfo kids[MAX_PROCS];
	int left = 0, used = 0, n;

	why[0] = '\0';
	for (int i = 0; i < c->n; i++) {
		struct pinfo pi;

		if (!pinfo_read(c->p[i].pid, &pi) || pi.start != c->p[i].start)
			continue;
		if (orphans_ok && pi.state == 'Z' && pi.ppid != getpid())
			continue;
		left++;
		if (used + 40 < (int)len)
			used += snprintf(why + used, len - (size_t)used,
			    "%d(ppid %d, %c) ", (int)pi.pid, (int)pi.ppid,
			    pi.state);
	}
	n = children_of(getpid(), kids, MAX_PROCS);
	for (int i = 0; i < n; i++) {
		if (census_old(c, &kids[i]))
			continue;
		left++;
		if (used + 40 < (int)len)
			used += snprintf(why + used, len - (size_t)used,
			    "child %d (%c) ", (int)kids[i].pid, kids[i].state);
	}
	for (int i = 0; i < c->n; i++)
		left += children_of(c->p[i].pid, kids, MAX_PROCS);
	return left;
}

/* The fork server: c's first process (our child). */
static pid_t census_server(const struct census *c)
{
	assert_true(c->n >= 1);
	assert_int_equal(c->p[0].ppid, getpid());
	return c->p[0].pid;
}

/* The open descriptors (the directory's own included, as in every
 * count), and what they are in list ("fd:target ..."). */
static int list_fds(char *list, size_t len)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0, used = 0;

	assert_non_null(d);
	list[0] = '\0';
	while ((e = readdir(d)) != NULL) {
		char path[300], target[64];
		ssize_t k;

		if (e->d_name[0] == '.')
			continue;
		n++;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		k = readlink(path, target, sizeof(target) - 1);
		target[k > 0 ? k : 0] = '\0';
		if (used + 80 < (int)len)
			used += snprintf(list + used, len - (size_t)used,
			    "%s:%s ", e->d_name, target);
	}
	closedir(d);
	return n;
}

static void assert_fds(int fds0, const char *list0)
{
	char list[1024];
	int n = list_fds(list, sizeof(list));

	if (n != fds0)
		fail_msg("fds %d, were %d:\n  now: %s\n  were: %s", n, fds0,
		         list, list0);
}

/* Descriptors 0-2 of the program, kept aside so that a test can tell
 * whether the library closed or replaced them, and put them back so that
 * the rest of the run still reports. */
struct std_fds {
	int         save[3];
	struct stat st[3];
};

static void std_save(struct std_fds *s)
{
	for (int fd = 0; fd < 3; fd++) {
		assert_int_equal(fstat(fd, &s->st[fd]), 0);
		s->save[fd] = fcntl(fd, F_DUPFD_CLOEXEC, 200);
		assert_true(s->save[fd] >= 0);
	}
}

/* Lists in lost ("0 1 ") those closed or replaced, and puts them back.
 * Call after the pool is gone (it may have taken those numbers). */
static void std_restore(struct std_fds *s, char *lost, size_t len)
{
	int used = 0;

	lost[0] = '\0';
	for (int fd = 0; fd < 3; fd++) {
		struct stat st;

		if (fstat(fd, &st) != 0 || st.st_dev != s->st[fd].st_dev ||
		    st.st_ino != s->st[fd].st_ino) {
			used += snprintf(lost + used, len - (size_t)used, "%d ",
			                 fd);
			dup2(s->save[fd], fd);
		}
		close(s->save[fd]);
	}
}

/* Whether fds 0-2 are as std_save saw them (nothing put back). */
static bool std_intact(const struct std_fds *s)
{
	for (int fd = 0; fd < 3; fd++) {
		struct stat st;

		if (fstat(fd, &st) != 0 || st.st_dev != s->st[fd].st_dev ||
		    st.st_ino != s->st[fd].st_ino)
			return false;
	}
	return true;
}

/* ---- the API's sentences, one by one ------------------------------------ */

static void test_isolated_enotsup_without_processes(void **state)
{
	ctp_pool *pool = iso_pool(1, 0, 0);
	struct job j;
	ctp_task *t = NULL;

	(void)state;
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j, NO_OPTS, &t),
	                 -ENOTSUP);
	assert_null(t);
	assert_int_equal(stats_of(pool).processes, 0);
	assert_int_equal(stats_of(pool).submitted, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(atomic_load(&j.calls), 0);
	job_fini(&j);
}

static void test_isolated_einval(void **state)
{
	ctp_pool_opts o = { .threads = 1 };
	ctp_pool *pool = NULL;
	ctp_token *fired;
	ctp_task *t = NULL;
	struct job j;

	(void)state;
	job_init(&j);
	o.processes = CTP_MAX_PROCESSES + 1;
	assert_int_equal(ctp_pool_create(&pool, &o), -EINVAL);
	assert_null(pool);
	o.processes = 1;
	o.kill_after = -2;
	assert_int_equal(ctp_pool_create(&pool, &o), -EINVAL);
	o.kill_after = INT64_MIN;
	assert_int_equal(ctp_pool_create(&pool, &o), -EINVAL);
	assert_null(pool);

	o.kill_after = CTP_FOREVER; /* allowed */
	pool = iso_pool_opts(o);
	assert_int_equal(ctp_pool_submit_isolated(NULL, fn_echo, "x", 1, &j,
	                 NULL, &t), -EINVAL);
	assert_int_equal(ctp_pool_submit_isolated(pool, NULL, "x", 1, &j,
	                 NULL, &t), -EINVAL);
	assert_int_equal(ctp_pool_submit_isolated(pool, fn_echo, NULL, 1, &j,
	                 NULL, &t), -EINVAL);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j,
	                 (ctp_task_opts){ .timeout = -5 }, &t), -EINVAL);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j,
	                 (ctp_task_opts){ .queue_wait = -5 }, &t), -EINVAL);
	/* same errors as ctp_pool_submit: a parent that already fired */
	assert_int_equal(ctp_token_create(&fired, NULL), 0);
	assert_int_equal(ctp_token_cancel(fired), 0);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j,
	                 (ctp_task_opts){ .parent = fired }, &t), -ECANCELED);
	ctp_token_release(fired);
	assert_null(t);
	assert_int_equal(stats_of(pool).submitted, 0);
	/* and after a shutdown */
	assert_int_equal(ctp_pool_shutdown(pool, 0, BOUND), 0);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j, NO_OPTS, &t),
	                 -ESHUTDOWN);
	assert_null(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	/* a task that was not accepted never runs: done is not called */
	assert_int_equal(atomic_load(&j.calls), 0);
	job_fini(&j);
}

/* A full queue refuses isolated tasks like any other (-EAGAIN). */
static void test_isolated_eagain_queue_full(void **state)
{
	ctp_pool *pool;
	struct job jb, j, r;
	ctp_task *blocker, *t, *rt = NULL;

	(void)state;
	say_open();
	pool = iso_pool_opts((ctp_pool_opts){ .threads = 1, .processes = 1,
	    .kill_after = CTP_SEC(30), .queue_capacity = 1 });
	job_init(&jb);
	job_init(&j);
	job_init(&r);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &jb, NO_OPTS,
	                 &blocker), 0);
	heard_started();
	assert_int_equal(iso_submit(pool, fn_echo, "q", 1, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(iso_submit(pool, fn_echo, "r", 1, &r, NO_OPTS, &rt),
	                 -EAGAIN);
	assert_int_equal(iso_submit(pool, fn_echo, "r", 1, &r,
	                 (ctp_task_opts){ .queue_wait = CTP_MSEC(20) }, &rt),
	                 -EAGAIN);
	assert_null(rt);
	assert_int_equal(stats_of(pool).rejected, 2);
	assert_int_equal(ctp_task_cancel(blocker), -EINPROGRESS);
	assert_int_equal(finish(blocker, &jb), -ECANCELED);
	assert_int_equal(finish(t, &j), ECHO_RET);
	expect_output(t, "q", 1);
	expect_counts(pool, (struct counts){ .submitted = 2, .completed = 2 });
	assert_int_equal(atomic_load(&r.calls), 0);
	ctp_task_release(blocker);
	ctp_task_release(t);
	shutdown_ok(pool);
	say_close();
	job_fini(&jb);
	job_fini(&j);
	job_fini(&r);
}

static void test_isolated_emsgsize_input(void **state)
{
	ctp_pool *pool = iso_pool_opts((ctp_pool_opts){ .threads = 1,
	    .processes = 1, .max_io = 1000 });
	char buf[1001];
	struct job j;
	ctp_task *t = NULL;

	(void)state;
	memset(buf, 'q', sizeof(buf));
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, buf, 1001, &j, NO_OPTS,
	                 &t), -EMSGSIZE);
	assert_null(t);
	assert_int_equal(stats_of(pool).submitted, 0);
	/* max_io itself fits, both ways */
	assert_int_equal(iso_submit(pool, fn_echo, buf, 1000, &j, NO_OPTS,
	                 &t), 0);
	assert_int_equal(finish(t, &j), ECHO_RET);
	expect_output(t, buf, 1000);
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = 1, .completed = 1 });
	shutdown_ok(pool);
	job_fini(&j);
}

static void test_isolated_emsgsize_output_keeps_what_fitted(void **state)
{
	ctp_pool *pool = iso_pool_opts((ctp_pool_opts){ .threads = 1,
	    .processes = 1, .max_io = 1000 });
	char want[1000];
	struct job j;
	ctp_task *t;

	(void)state;
	memset(want, 'a', 600);
	memset(want + 600, 'b', 400);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_overflow, NULL, 0, &j, NO_OPTS,
	                 &t), 0);
	assert_int_equal(finish(t, &j), MSG_OK);
	expect_output(t, want, sizeof(want));
	assert_int_equal(ctp_task_exit_signal(t), 0);
	ctp_task_release(t);
	shutdown_ok(pool);
	job_fini(&j);
}

static void test_isolated_output_einprogress_and_einval(void **state)
{
	ctp_pool *pool;
	struct job j, plain;
	ctp_task *t, *pt;
	const void *data;
	size_t len;

	(void)state;
	say_open();
	pool = iso_pool(2, 1, CTP_SEC(30));
	job_init(&j);
	job_init(&plain);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &j, NO_OPTS, &t),
	                 0);
	heard_started();
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	assert_int_equal(ctp_task_output(t, &data, &len), -EINPROGRESS);
	assert_int_equal(ctp_task_exit_signal(t), 0); /* not finished */
	assert_int_equal(ctp_task_output(NULL, &data, &len), -EINVAL);
	assert_int_equal(ctp_task_output(t, NULL, &len), -EINVAL);
	assert_int_equal(ctp_task_output(t, &data, NULL), -EINVAL);
	assert_int_equal(ctp_task_exit_signal(NULL), 0);

	/* a task that is not isolated, on the same pool */
	assert_int_equal(ctp_pool_submit(pool, noop_fn, &plain,
	                 &(ctp_task_opts){ .done = job_done }, &pt), 0);
	assert_int_equal(finish(pt, &plain), 0);
	assert_int_equal(ctp_task_output(pt, &data, &len), -EINVAL);
	assert_int_equal(ctp_task_exit_signal(pt), 0);
	ctp_task_release(pt);

	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	assert_int_equal(finish(t, &j), -ECANCELED);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(struct woke));
	assert_int_equal(ctp_task_exit_signal(t), 0); /* it survived */
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = 2, .completed = 2 });
	shutdown_ok(pool);
	say_close();
	job_fini(&j);
	job_fini(&plain);
}

/* No input, no output. Under UBSan this is the first test to fail today:
 * out_append (src/isolated.c) calls memcpy(iso->out + 0, p, 0) with
 * iso->out still NULL when a task ends without output ("null pointer
 * passed as argument 1"), and with halt_on_error=1 the run stops here. */
static void test_isolated_empty_input_is_null(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);
	struct job j1, j2;
	ctp_task *t1, *t2;

	(void)state;
	job_init(&j1);
	job_init(&j2);
	assert_int_equal(iso_submit(pool, fn_echo, NULL, 0, &j1, NO_OPTS,
	                 &t1), 0);
	/* a pointer with no bytes: the function sees NULL all the same */
	assert_int_equal(iso_submit(pool, fn_echo, "x", 0, &j2, NO_OPTS,
	                 &t2), 0);
	assert_int_equal(finish(t1, &j1), ECHO_RET);
	assert_int_equal(finish(t2, &j2), ECHO_RET);
	expect_output(t1, NULL, 0);
	expect_output(t2, NULL, 0);
	assert_int_equal(ctp_task_state(t1), CTP_TASK_DONE);
	ctp_task_release(t1);
	ctp_task_release(t2);
	shutdown_ok(pool);
	job_fini(&j1);
	job_fini(&j2);
}

/* The input is copied at submit: changing the buffer afterwards (while the
 * task waits behind another) changes nothing. */
static void test_isolated_input_copied_at_submit(void **state)
{
	ctp_pool *pool;
	struct job jb, j;
	ctp_task *blocker, *t;
	char buf[5000];

	(void)state;
	say_open();
	pool = iso_pool(1, 1, CTP_SEC(30));
	job_init(&jb);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &jb, NO_OPTS,
	                 &blocker), 0);
	heard_started();
	memset(buf, 'A', sizeof(buf));
	assert_int_equal(iso_submit(pool, fn_echo, buf, sizeof(buf), &j,
	                 NO_OPTS, &t), 0);
	memset(buf, 'B', sizeof(buf));
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);
	assert_int_equal(ctp_task_cancel(blocker), -EINPROGRESS);
	assert_int_equal(finish(blocker, &jb), -ECANCELED);
	assert_int_equal(finish(t, &j), ECHO_RET);
	memset(buf, 'A', sizeof(buf));
	expect_output(t, buf, sizeof(buf));
	ctp_task_release(blocker);
	ctp_task_release(t);
	shutdown_ok(pool);
	say_close();
	job_fini(&jb);
	job_fini(&j);
}

/* The function runs in a copy of the program as it was at create. */
static void test_isolated_sees_program_as_at_create(void **state)
{
	ctp_pool *pool;
	struct job j1, j2;
	ctp_task *t1, *t2;
	int s1, s2;

	(void)state;
	g_at_create = 1;
	g_written = 0;
	pool = iso_pool(1, 1, 0);
	g_at_create = 2; /* after create: not seen there */
	job_init(&j1);
	job_init(&j2);
	assert_int_equal(iso_submit(pool, fn_globals, NULL, 0, &j1, NO_OPTS,
	                 &t1), 0);
	s1 = finish(t1, &j1);
	assert_int_equal(s1 / 100, 1);
	assert_int_equal(s1 % 100, 0);
	/* what it wrote stayed in its copy */
	assert_int_equal(g_written, 0);
	assert_int_equal(iso_submit(pool, fn_globals, NULL, 0, &j2, NO_OPTS,
	                 &t2), 0);
	s2 = finish(t2, &j2);
	assert_int_equal(s2 / 100, 1);
	assert_int_equal(g_written, 0);
	ctp_task_release(t1);
	ctp_task_release(t2);
	shutdown_ok(pool);
	g_at_create = 1;
	job_fini(&j1);
	job_fini(&j2);
}

/* arg is what done receives, once, with the status; detached tasks too. */
static void test_isolated_done_gets_arg_once(void **state)
{
	ctp_pool *pool = iso_pool(2, 2, 0);
	struct job j[8];
	ctp_task *t;

	(void)state;
	for (int i = 0; i < 8; i++) {
		job_init(&j[i]);
		assert_int_equal(iso_submit(pool, fn_echo, &i, sizeof(i),
		                 &j[i], NO_OPTS, i == 0 ? &t : NULL), 0);
	}
	assert_int_equal(finish(t, &j[0]), ECHO_RET);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	ctp_task_release(t);
	for (int i = 1; i < 8; i++)
		tu_sem_wait(&j[i].done_sem);
	expect_counts(pool, (struct counts){ .submitted = 8, .completed = 8 });
	for (int i = 0; i < 8; i++) {
		assert_int_equal(atomic_load(&j[i].calls), 1);
		assert_int_equal(atomic_load(&j[i].status), ECHO_RET);
		assert_ptr_equal(atomic_load(&j[i].arg), &j[i]);
	}
	shutdown_ok(pool);
	for (int i = 0; i < 8; i++)
		job_fini(&j[i]);
}

static void test_isolated_stats_processes(void **state)
{
	ctp_pool *pool = iso_pool(2, 3, 0);
	ctp_stats s;

	(void)state;
	ctp_pool_stats(pool, &s);
	assert_int_equal(s.processes, 3);
	assert_int_equal(s.threads, 2);
	assert_int_equal(s.killed, 0);
	assert_int_equal(s.crashed, 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(ctp_pool_submit_isolated(pool, fn_echo, "ab",
		                 2, NULL, NULL, NULL), 0);
	expect_counts(pool, (struct counts){ .submitted = 5, .completed = 5 });
	assert_int_equal(stats_of(pool).processes, 3);
	shutdown_ok(pool);
}

/* At most min(threads, processes) functions run at once. */
static void concurrency_case(unsigned threads, unsigned processes)
{
	struct concurrency *c;
	ctp_pool *pool;
	unsigned lim = threads < processes ? threads : processes;

	c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(c != MAP_FAILED);
	memset(c, 0, sizeof(*c));
	g_conc = c; /* before create: the copies see it */
	pool = iso_pool(threads, processes, 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(ctp_pool_submit_isolated(pool, fn_count, NULL,
		                 0, NULL, NULL, NULL), 0);
	expect_counts(pool, (struct counts){ .submitted = 8, .completed = 8 });
	assert_int_equal(atomic_load(&c->arrived), 8);
	assert_int_equal(atomic_load(&c->timeouts), 0);
	assert_true(atomic_load(&c->max) <= (int)lim);
	assert_int_equal(atomic_load(&c->max), 2);
	shutdown_ok(pool);
	g_conc = NULL;
	munmap(c, sizeof(*c));
}

static void test_isolated_at_most_min_threads_processes(void **state)
{
	(void)state;
	concurrency_case(4, 2);
	concurrency_case(2, 4);
}

/* ---- killed: a function that ignores its token -------------------------- */

#define KILL_AFTER CTP_MSEC(50)

enum kill_by { BY_HANDLE, BY_PARENT, BY_DEADLINE };

static void killed_case(enum kill_by by)
{
	ctp_pool *pool;
	ctp_token *parent = NULL;
	ctp_task_opts o = { 0 };
	struct job j;
	ctp_task *t;
	int64_t t0, dt, least = KILL_AFTER;
	int want;

	say_open();
	pool = iso_pool(1, 1, KILL_AFTER);
	job_init(&j);
	if (by == BY_PARENT) {
		assert_int_equal(ctp_token_create(&parent, NULL), 0);
		o.parent = parent;
	}
	if (by == BY_DEADLINE) {
		o.timeout = CTP_MSEC(500);
		least += o.timeout;
	}
	t0 = tu_now_ns();
	assert_int_equal(iso_submit(pool, fn_spin, NULL, 0, &j, o, &t), 0);
	heard_started();
	switch (by) {
	case BY_HANDLE:
		t0 = tu_now_ns();
		assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
		want = -ECANCELED;
		break;
	case BY_PARENT:
		t0 = tu_now_ns();
		assert_int_equal(ctp_token_cancel(parent), 0);
		want = -ECANCELED;
		break;
	default:
		want = -ETIMEDOUT;
		break;
	}
	assert_int_equal(finish(t, &j), want);
	dt = tu_now_ns() - t0;
	/* killed kill_after after the fire, not before, not much after */
	assert_true(dt >= least);
	assert_true(dt < least + WOKE);
	assert_int_equal(ctp_task_exit_signal(t), SIGKILL);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	expect_output(t, NULL, 0);
	ctp_task_release(t);
	/* killed, not timed_out nor completed */
	expect_counts(pool, (struct counts){ .submitted = 1, .killed = 1 });
	assert_int_equal(procs_settle(pool, 1), 1);
	/* a fresh process took its place */
	job_fini(&j);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "hi", 2, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(finish(t, &j), ECHO_RET);
	expect_output(t, "hi", 2);
	ctp_task_release(t);
	ctp_token_release(parent);
	shutdown_ok(pool);
	say_close();
	job_fini(&j);
}

static void test_isolated_killed_cancel_by_handle(void **state)
{
	(void)state;
	killed_case(BY_HANDLE);
}

static void test_isolated_killed_parent_token(void **state)
{
	(void)state;
	killed_case(BY_PARENT);
}

static void test_isolated_killed_deadline(void **state)
{
	(void)state;
	killed_case(BY_DEADLINE);
}

/* kill_after CTP_FOREVER: a shutdown still kills at the end of its grace,
 * and returns 0 (nothing abandoned).
 *
 * Fails now and then (about half the runs under TSan, not seen plain):
 * ctp_pool_shutdown returns -ETIMEDOUT. Suspected cause: iso_run
 * (src/isolated.c, its last busy store) sets the worker's busy back to 1
 * as soon as the dispatch ends, so while the killed task finishes (its
 * done runs) the shutdown's late loop (src/pool.c wait_quiet, `v <=
 * in_user_code(pool)`) counts it as user code that outlived the grace and
 * abandons it. On failure the test settles the pool with a second
 * shutdown before it reports, so that nothing of it outlives the test. */
static void test_isolated_killed_shutdown_grace_forever(void **state)
{
	struct census c;
	char why[512];
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	int64_t t0, dt;
	int left, r, again = 0;

	(void)state;
	say_open();
	census_init(&c);
	pool = iso_pool(1, 1, CTP_FOREVER);
	census_add(&c);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_spin, NULL, 0, &j, NO_OPTS, &t),
	                 0);
	heard_started();
	t0 = tu_now_ns();
	r = ctp_pool_shutdown(pool, 0, CTP_MSEC(100));
	dt = tu_now_ns() - t0;
	if (r != 0) /* a later call returns 0 once the straggler is gone */
		again = ctp_pool_shutdown(pool, 0, BOUND);
	assert_int_equal(again, 0);
	assert_true(dt >= CTP_MSEC(100));
	assert_true(dt < CTP_MSEC(100) + WOKE);
	assert_int_equal(finish(t, &j), -ESHUTDOWN);
	assert_int_equal(ctp_task_exit_signal(t), SIGKILL);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	expect_counts(pool, (struct counts){ .submitted = 1, .killed = 1 });
	assert_int_equal(stats_of(pool).processes, 0);
	assert_int_equal(stats_of(pool).threads, 0);
	/* every worker process (and the fork server) reaped already */
	left = census_left(&c, false, why, sizeof(why));
	if (left != 0)
		fail_msg("%d processes left: %s", left, why);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	say_close();
	job_fini(&j);
	if (r != 0)
		fail_msg("ctp_pool_shutdown returned %d (%s) with a killed "
		         "isolated task as its only straggler", r,
		         ctp_strerror(r));
}

/* ---- cooperative: the token wakes the function in its process ----------- */

/* fn waits through its token; a cancel by handle wakes it at once, well
 * before kill_after: its own return value, no kill. */
static void coop_case(ctp_isolated_fn fn, int want_wait, int want_extra)
{
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	const struct woke *w;
	const void *data;
	size_t len;
	int64_t t0;

	say_open();
	pool = iso_pool(1, 1, CTP_SEC(30));
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn, NULL, 0, &j, NO_OPTS, &t), 0);
	heard_started();
	t0 = tu_now_ns();
	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	assert_int_equal(finish(t, &j), -ECANCELED);
	assert_true(tu_now_ns() - t0 < WOKE);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(*w));
	w = data;
	assert_int_equal(w->wait, want_wait);
	assert_int_equal(w->reason, -ECANCELED);
	assert_int_equal(w->cancelled, 1);
	assert_int_equal(w->extra, want_extra);
	ctp_task_release(t);
	/* it returned: it completed, nothing was killed */
	expect_counts(pool, (struct counts){ .submitted = 1, .completed = 1 });
	assert_int_equal(stats_of(pool).processes, 1);
	shutdown_ok(pool);
	say_close();
	job_fini(&j);
}

static void test_isolated_coop_sleep_woken(void **state)
{
	(void)state;
	coop_case(fn_sleep, -ECANCELED, 0);
}

static void test_isolated_coop_poll_fd_woken(void **state)
{
	(void)state;
	coop_case(fn_poll_fd, 1, POLLIN);
}

static void test_isolated_coop_watch_woken(void **state)
{
	(void)state;
	coop_case(fn_watch, 1, 'W');
}

static void test_isolated_coop_queue_pop_woken(void **state)
{
	(void)state;
	coop_case(fn_queue_pop, -ECANCELED, 0);
}

static void test_isolated_coop_child_token_woken(void **state)
{
	(void)state;
	coop_case(fn_child_sleep, -ECANCELED, -ECANCELED);
}

/* A function that leaves a child of its token behind still completes; its
 * process cannot be reused (that memory is referenced) and is replaced. */
static void test_isolated_leaked_child_token_pool_goes_on(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);

	(void)state;
	for (int i = 0; i < 3; i++) {
		struct job j;
		ctp_task *t;

		job_init(&j);
		assert_int_equal(iso_submit(pool, fn_leak_child, NULL, 0, &j,
		                 NO_OPTS, &t), 0);
		assert_int_equal(finish(t, &j), 7);
		assert_int_equal(ctp_task_exit_signal(t), 0);
		assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
		ctp_task_release(t);
		job_fini(&j);
		job_init(&j);
		assert_int_equal(iso_submit(pool, fn_echo, "ok", 2, &j,
		                 NO_OPTS, &t), 0);
		assert_int_equal(finish(t, &j), ECHO_RET);
		expect_output(t, "ok", 2);
		ctp_task_release(t);
		job_fini(&j);
	}
	expect_counts(pool, (struct counts){ .submitted = 6, .completed = 6 });
	assert_int_equal(procs_settle(pool, 1), 1);
	shutdown_ok(pool);
}

/* The token in the worker process has the parent's reason: a deadline. */
static void test_isolated_token_reason_deadline(void **state)
{
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	const struct woke *w;
	const void *data;
	size_t len;
	int64_t t0 = tu_now_ns();

	(void)state;
	say_open();
	pool = iso_pool(1, 1, CTP_SEC(30));
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &j,
	                 (ctp_task_opts){ .timeout = CTP_MSEC(200) }, &t), 0);
	heard_started();
	assert_int_equal(finish(t, &j), -ETIMEDOUT);
	assert_true(tu_now_ns() - t0 >= CTP_MSEC(200));
	assert_true(tu_now_ns() - t0 < CTP_MSEC(200) + WOKE);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(*w));
	w = data;
	assert_int_equal(w->wait, -ETIMEDOUT);
	assert_int_equal(w->reason, -ETIMEDOUT);
	ctp_task_release(t);
	/* it ran to its end: completed, not timed_out */
	expect_counts(pool, (struct counts){ .submitted = 1, .completed = 1 });
	shutdown_ok(pool);
	say_close();
	job_fini(&j);
}

/* ... and a shutdown; a queued isolated task is dropped. */
static void test_isolated_token_reason_shutdown(void **state)
{
	ctp_pool *pool;
	struct job j, q;
	ctp_task *t, *tq;
	const struct woke *w;
	const void *data;
	size_t len;

	(void)state;
	say_open();
	pool = iso_pool(1, 1, CTP_SEC(30));
	job_init(&j);
	job_init(&q);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &j, NO_OPTS, &t),
	                 0);
	heard_started();
	assert_int_equal(iso_submit(pool, fn_echo, "q", 1, &q, NO_OPTS, &tq),
	                 0);
	assert_int_equal(ctp_pool_shutdown(pool, 0, WOKE), 0);
	assert_int_equal(finish(t, &j), -ESHUTDOWN);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(*w));
	w = data;
	assert_int_equal(w->wait, -ESHUTDOWN);
	assert_int_equal(w->reason, -ESHUTDOWN);
	assert_int_equal(finish(tq, &q), -ESHUTDOWN);
	assert_int_equal(ctp_task_state(tq), CTP_TASK_CANCELLED);
	expect_output(tq, NULL, 0);
	expect_counts(pool, (struct counts){ .submitted = 2, .completed = 1,
	                                     .dropped = 1 });
	assert_int_equal(stats_of(pool).processes, 0);
	ctp_task_release(t);
	ctp_task_release(tq);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	say_close();
	job_fini(&j);
	job_fini(&q);
}

/* A drain lets queued isolated tasks run. */
static void test_isolated_shutdown_drains_queued(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);
	struct job j[4];
	ctp_task *t[4];

	(void)state;
	for (int i = 0; i < 4; i++) {
		job_init(&j[i]);
		assert_int_equal(iso_submit(pool, fn_echo, "dr", 2, &j[i],
		                 NO_OPTS, &t[i]), 0);
	}
	assert_int_equal(ctp_pool_shutdown(pool, CTP_FOREVER, BOUND), 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(finish(t[i], &j[i]), ECHO_RET);
		expect_output(t[i], "dr", 2);
		ctp_task_release(t[i]);
		job_fini(&j[i]);
	}
	expect_counts(pool, (struct counts){ .submitted = 4, .completed = 4 });
	assert_int_equal(stats_of(pool).processes, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

/* ---- a token that fired before the task reached a process --------------- */

/* Queued behind a busy worker thread: its parent fires, it never runs. */
static void test_isolated_fired_while_queued_never_runs(void **state)
{
	ctp_pool *pool;
	ctp_token *parent;
	struct job jb, j;
	ctp_task *blocker, *t;

	(void)state;
	say_open();
	pool = iso_pool(1, 1, CTP_SEC(30));
	job_init(&jb);
	job_init(&j);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &jb, NO_OPTS,
	                 &blocker), 0);
	heard_started();
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &j,
	                 (ctp_task_opts){ .parent = parent }, &t), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);
	assert_int_equal(ctp_token_cancel(parent), 0);
	/* its done has returned before the cancel did */
	assert_int_equal(atomic_load(&j.calls), 1);
	assert_int_equal(finish(t, &j), -ECANCELED);
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	expect_output(t, NULL, 0);
	assert_int_equal(ctp_task_cancel(blocker), -EINPROGRESS);
	assert_int_equal(finish(blocker, &jb), -ECANCELED);
	expect_counts(pool, (struct counts){ .submitted = 2, .completed = 1,
	                                     .cancelled = 1 });
	assert_true(quiet()); /* only the blocker ever started */
	ctp_task_release(blocker);
	ctp_task_release(t);
	ctp_token_release(parent);
	shutdown_ok(pool);
	say_close();
	job_fini(&jb);
	job_fini(&j);
}

/* Taken by a worker thread but waiting for the only process: cancelled,
 * it never runs (CTP_TASK_CANCELLED, counted in cancelled). */
static void test_isolated_fired_while_waiting_for_process(void **state)
{
	ctp_pool *pool;
	struct job jb, j;
	ctp_task *blocker, *t;
	int64_t limit;

	(void)state;
	say_open();
	pool = iso_pool(2, 1, CTP_SEC(30));
	job_init(&jb);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &jb, NO_OPTS,
	                 &blocker), 0);
	heard_started();
	assert_int_equal(iso_submit(pool, fn_sleep, NULL, 0, &j, NO_OPTS, &t),
	                 0);
	/* the second worker thread takes it (a bounded poll of its state) */
	limit = tu_now_ns() + BOUND;
	while (ctp_task_state(t) == CTP_TASK_QUEUED && tu_now_ns() < limit)
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	assert_int_equal(finish(t, &j), -ECANCELED);
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	expect_output(t, NULL, 0);
	assert_int_equal(ctp_task_cancel(blocker), -EINPROGRESS);
	assert_int_equal(finish(blocker, &jb), -ECANCELED);
	expect_counts(pool, (struct counts){ .submitted = 2, .completed = 1,
	                                     .cancelled = 1 });
	assert_true(quiet());
	ctp_task_release(blocker);
	ctp_task_release(t);
	shutdown_ok(pool);
	say_close();
	job_fini(&jb);
	job_fini(&j);
}

/* ---- crashes ------------------------------------------------------------ */

/* fn's process dies on its own: -EOWNERDEAD, crashed, the pool goes on. */
static void crash_case(ctp_pool *pool, ctp_isolated_fn fn, int want_sig,
                       bool any_sig)
{
	ctp_stats s0 = stats_of(pool);
	unsigned n = s0.processes;
	struct job j;
	ctp_task *t;
	int ws;

	job_init(&j);
	assert_int_equal(iso_submit(pool, fn, NULL, 0, &j, NO_OPTS, &t), 0);
	assert_int_equal(finish(t, &j), -EOWNERDEAD);
	if (!any_sig)
		assert_int_equal(ctp_task_exit_signal(t), want_sig);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = s0.submitted + 1,
	    .completed = s0.completed, .crashed = s0.crashed + 1 });
	assert_int_equal(procs_settle(pool, n), n);
	/* the workers are not our children: our waitpid(-1) takes none */
	assert_int_equal(waitpid(-1, &ws, WNOHANG), 0);
	/* the pool carries on */
	job_fini(&j);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "ok", 2, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(finish(t, &j), ECHO_RET);
	expect_output(t, "ok", 2);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	ctp_task_release(t);
	job_fini(&j);
}

static void test_isolated_crash_segv(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);

	(void)state;
	crash_case(pool, fn_segv, SIGSEGV, false);
	shutdown_ok(pool);
}

static void test_isolated_crash_abort(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);

	(void)state;
	crash_case(pool, fn_abort, SIGABRT, false);
	shutdown_ok(pool);
}

static void test_isolated_crash_exit(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);

	(void)state;
	crash_case(pool, fn_exit3, 0, false);
	shutdown_ok(pool);
}

/* One after the other on a pool of two processes, and the pool goes on. */
static void test_isolated_crash_in_a_row(void **state)
{
	ctp_pool *pool = iso_pool(2, 2, 0);

	(void)state;
	for (int i = 0; i < 3; i++) {
		crash_case(pool, fn_segv, SIGSEGV, false);
		crash_case(pool, fn_abort, SIGABRT, false);
		crash_case(pool, fn_exit3, 0, false);
	}
	shutdown_ok(pool);
}

static void test_isolated_crash_out_of_memory(void **state)
{
	ctp_pool *pool;

	(void)state;
#if defined(ISO_ASAN) || defined(ISO_TSAN)
	/* a sanitizer's shadow mappings are far beyond any RLIMIT_AS: every
	 * allocation of the worker would fail, not only the test's */
	print_message("process_memory case skipped under ASan/TSan\n");
	skip();
#endif
	pool = iso_pool_opts((ctp_pool_opts){ .threads = 1, .processes = 1,
	    .process_memory = 256 * MIB });
	/* the signal depends on how the OOM shows (here: a write through
	 * NULL); the status and the count do not */
	crash_case(pool, fn_eat_memory, 0, true);
	shutdown_ok(pool);
}

/* Killed from outside while it runs: not by the pool, so a crash. */
static void test_isolated_worker_killed_from_outside(void **state)
{
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	pid_t pid = 0;

	(void)state;
	say_open();
	pool = iso_pool(1, 1, CTP_SEC(30));
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_spin_pid, NULL, 0, &j, NO_OPTS,
	                 &t), 0);
	assert_true(hear(&pid, sizeof(pid), BOUND));
	assert_true(pid > 0 && pid != getpid());
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(finish(t, &j), -EOWNERDEAD);
	assert_int_equal(ctp_task_exit_signal(t), SIGKILL);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = 1, .crashed = 1 });
	assert_int_equal(procs_settle(pool, 1), 1);
	job_fini(&j);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "ok", 2, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(finish(t, &j), ECHO_RET);
	ctp_task_release(t);
	shutdown_ok(pool);
	say_close();
	job_fini(&j);
}

/* An idle worker process killed from outside (the OOM killer's way) is
 * replaced before the next task needs it: that task runs normally.
 *
 * Regression (fixed in a1481fd): settle() looks for the fork server's DIED
 * without waiting, so the next task's RUN went to the dead process and
 * the task ended -EOWNERDEAD (counted crashed) without having run. When
 * the fork server then closed the dead worker's socket with that RUN
 * still unread, recvmsg on ours failed with ECONNRESET before the DIED
 * could be read: the dispatcher took it for EOF (exit signal 0), marked
 * the slot dead (stats.processes dropped) and, as ctp__msg_recv returned
 * before setting *nfds, closed four uninitialised "descriptors" (seen: 0
 * and 1, the program's stdin and stdout). */
#define IDLE_ROUNDS 10

static void test_isolated_idle_worker_killed_from_outside(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);
	uint64_t tasks = 0;
	int bad = 0, bad_status = 0, bad_sig = 0, bad_sig0 = 0, hurt = -1;
	struct std_fds std;
	char lost[64];
	unsigned procs;

	(void)state;
	std_save(&std);
	for (int round = 0; round < IDLE_ROUNDS; round++) {
		const void *data;
		struct job j;
		ctp_task *t;
		size_t len;
		pid_t pid;
		int status;

		job_init(&j);
		assert_int_equal(iso_submit(pool, fn_getpid, NULL, 0, &j,
		                 NO_OPTS, &t), 0);
		assert_int_equal(finish(t, &j), 0);
		assert_int_equal(ctp_task_output(t, &data, &len), 0);
		assert_int_equal(len, sizeof(pid));
		memcpy(&pid, data, sizeof(pid));
		ctp_task_release(t);
		job_fini(&j);
		assert_int_equal(kill(pid, SIGKILL), 0);
		/* at once: the next task may reach the slot before the news
		 * of the death does */
		job_init(&j);
		assert_int_equal(iso_submit(pool, fn_echo, "ok", 2, &j,
		                 NO_OPTS, &t), 0);
		status = finish(t, &j);
		if (status == ECHO_RET) {
			expect_output(t, "ok", 2);
		} else {
			bad_sig0 += ctp_task_exit_signal(t) == 0;
			if (bad++ == 0) {
				bad_status = status;
				bad_sig = ctp_task_exit_signal(t);
			}
		}
		ctp_task_release(t);
		job_fini(&j);
		tasks += 2;
		if (hurt < 0 && !std_intact(&std))
			hurt = round;
	}
	assert_int_equal(iso_identity(pool).submitted, tasks);
	procs = procs_settle(pool, 1);
	shutdown_ok(pool);
	std_restore(&std, lost, sizeof(lost));
	if (bad != 0 || procs != 1 || hurt >= 0)
		fail_msg("%d of %d rounds: the task after an idle worker "
		         "process was killed did not run (first: status %d, "
		         "exit signal %d; %d with exit signal 0); processes "
		         "%u at the end, want 1; descriptors 0-2 closed or "
		         "replaced from round %d: [%s]", bad, IDLE_ROUNDS,
		         bad_status, bad_sig, bad_sig0, procs, hurt, lost);
}

/* The thread of this process named name (its comm), or -1. */
static pid_t thread_named(const char *name)
{
	tu_threads ts;

	tu_threads_scan(&ts, NULL);
	for (int i = 0; i < ts.kept; i++) {
		char comm[16] = "";

		if (tu_thread_info(ts.tid[i], comm, NULL) &&
		    strcmp(comm, name) == 0)
			return ts.tid[i];
	}
	return -1;
}

/* Waits (bounded) until thread tid sits in poll(fds, nfds, -1): a
 * dispatcher that has sent RUN and waits for its process. */
static bool in_blocking_poll(pid_t tid, unsigned long nfds)
{
	int64_t limit = tu_now_ns() + BOUND;
#if defined(SYS_poll)
	long want = SYS_poll;
#else
	long want = SYS_ppoll;
#endif

	while (tu_now_ns() < limit) {
		unsigned long a[3];
		long nr = -1;
		int in = tu_thread_syscall(tid, &nr, a);

		if (in < 0)
			return false;
		/* poll's timeout is an int: -1 shows as 0xffffffff; ppoll's
		 * is a NULL timespec */
		if (in > 0 && nr == want && a[1] == nfds &&
		    (want == SYS_ppoll ? a[2] == 0 : (int)a[2] == -1))
			return true;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
	return false;
}

static bool proc_state_is(pid_t pid, char state)
{
	int64_t limit = tu_now_ns() + BOUND;
	struct pinfo pi;

	while (tu_now_ns() < limit) {
		if (!pinfo_read(pid, &pi))
			return false;
		if (pi.state == state)
			return true;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
	return false;
}

/* The same, deterministic: the fork server is held (SIGSTOP) while the
 * idle worker process is killed, so the news of its death cannot arrive
 * before the next task has been sent to it (its RUN waits, unread, on the
 * dead worker's socket); then the fork server goes on. The task must still
 * run (in the replacement), the pool keep its process, and the program's
 * own descriptors stay open. Before a1481fd, as above: the status always
 * wrong; the process count and the descriptors whenever the ECONNRESET
 * came first (most runs). */
static void test_isolated_idle_worker_death_reported_late(void **state)
{
	struct std_fds std;
	struct census c;
	const void *data;
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	char lost[64] = "";
	size_t len;
	pid_t fs, pid, tid;
	int status, sig;
	unsigned procs;
	bool ok;

	(void)state;
	std_save(&std);
	census_init(&c);
	pool = iso_pool_opts((ctp_pool_opts){ .threads = 1, .processes = 1,
	    .name = "idl" });
	census_add(&c);
	fs = census_server(&c);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_getpid, NULL, 0, &j, NO_OPTS,
	                 &t), 0);
	assert_int_equal(finish(t, &j), 0);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(pid));
	memcpy(&pid, data, sizeof(pid));
	ctp_task_release(t);
	job_fini(&j);

	/* no assert while the fork server is stopped: a failing test would
	 * leave it stopped, and it could not notice that we are gone */
	job_init(&j);
	ok = kill(fs, SIGSTOP) == 0 && proc_state_is(fs, 'T') &&
	    kill(pid, SIGKILL) == 0 && proc_state_is(pid, 'Z') && /* unreaped */
	    iso_submit(pool, fn_echo, "ok", 2, &j, NO_OPTS, &t) == 0;
	if (ok) {
		tid = thread_named("idl-0");
		/* sent RUN (unread, on the dead worker's socket) and waits */
		ok = tid > 0 && in_blocking_poll(tid, 2);
	}
	assert_int_equal(kill(fs, SIGCONT), 0);
	assert_true(ok);
	status = finish(t, &j);
	sig = ctp_task_exit_signal(t);
	ctp_task_release(t);
	job_fini(&j);
	procs = procs_settle(pool, 1);
	shutdown_ok(pool);
	std_restore(&std, lost, sizeof(lost));
	if (status != ECHO_RET || procs != 1 || lost[0] != '\0')
		fail_msg("the task sent to a worker process that had died "
		         "unreported: status %d (want %d), exit signal %d; "
		         "processes %u (want 1); descriptors of the program "
		         "closed or replaced: [%s]", status, ECHO_RET, sig,
		         procs, lost);
}

/* A task cancelled before its process read it (a process slow to start
 * on a loaded machine; here it is held with SIGSTOP) is killed kill_after
 * later like any other: its reason, SIGKILL, a fresh process in its place,
 * and nothing of the program touched. Before a1481fd most runs failed:
 * the pool's own kill left the RUN unread, so the same ECONNRESET as above
 * lost the slot's process and closed descriptors of the program. */
static void test_isolated_killed_before_it_read_its_task(void **state)
{
	struct std_fds std;
	const void *data;
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	char lost[64];
	size_t len;
	pid_t pid, tid;
	int status, sig, st;
	unsigned procs;
	bool ok;

	(void)state;
	std_save(&std);
	pool = iso_pool_opts((ctp_pool_opts){ .threads = 1, .processes = 1,
	    .kill_after = KILL_AFTER, .name = "krr" });
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_getpid, NULL, 0, &j, NO_OPTS,
	                 &t), 0);
	assert_int_equal(finish(t, &j), 0);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(pid));
	memcpy(&pid, data, sizeof(pid));
	ctp_task_release(t);
	job_fini(&j);

	job_init(&j);
	assert_int_equal(kill(pid, SIGSTOP), 0);
	ok = proc_state_is(pid, 'T') &&
	    iso_submit(pool, fn_echo, "ok", 2, &j, NO_OPTS, &t) == 0;
	if (!ok)
		kill(pid, SIGCONT);
	assert_true(ok);
	tid = thread_named("krr-0");
	assert_true(tid > 0);
	/* RUN sent (unread: the process is stopped), the dispatcher waits */
	assert_true(in_blocking_poll(tid, 2));
	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	status = finish(t, &j);
	sig = ctp_task_exit_signal(t);
	st = ctp_task_state(t);
	ctp_task_release(t);
	job_fini(&j);
	procs = procs_settle(pool, 1);
	shutdown_ok(pool);
	std_restore(&std, lost, sizeof(lost));
	if (status != -ECANCELED || sig != SIGKILL || st != CTP_TASK_DONE ||
	    procs != 1 || lost[0] != '\0')
		fail_msg("killed before it read its task: status %d (want %d), "
		         "exit signal %d (want %d), state %d; processes %u "
		         "(want 1); descriptors of the program closed or "
		         "replaced: [%s]", status, -ECANCELED, sig, SIGKILL, st,
		         procs, lost);
}

/* ---- input and output --------------------------------------------------- */

static void test_isolated_io_round_trip(void **state)
{
	static const size_t sizes[] = { 1, CHUNK - 1, CHUNK, CHUNK + 1,
	                                3 * CHUNK, MIB };
	ctp_pool *pool = iso_pool(2, 2, 0);
	unsigned char *buf = malloc(MIB);
	uint64_t n = 0;

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < MIB; i++)
		buf[i] = gen_byte(3, i);
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		struct job j;
		ctp_task *t;

		job_init(&j);
		assert_int_equal(iso_submit(pool, fn_echo, buf, sizes[k], &j,
		                 NO_OPTS, &t), 0);
		assert_int_equal(finish(t, &j), ECHO_RET);
		expect_output(t, buf, sizes[k]);
		ctp_task_release(t);
		job_fini(&j);
		n++;
	}
	expect_counts(pool, (struct counts){ .submitted = n, .completed = n });
	shutdown_ok(pool);
	free(buf);
}

static void test_isolated_output_larger_than_input(void **state)
{
	ctp_pool *pool = iso_pool(1, 1, 0);
	uint32_t hdr[2] = { 3 * MIB + 123, 99 };
	const unsigned char *data;
	const void *p;
	struct job j;
	ctp_task *t;
	size_t len, bad = 0;

	(void)state;
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_generate, hdr, sizeof(hdr), &j,
	                 NO_OPTS, &t), 0);
	assert_int_equal(finish(t, &j), 12);
	assert_int_equal(ctp_task_output(t, &p, &len), 0);
	assert_int_equal(len, hdr[0]);
	data = p;
	for (size_t i = 0; i < len; i++)
		bad += data[i] != gen_byte(hdr[1], i);
	assert_int_equal(bad, 0);
	ctp_task_release(t);
	shutdown_ok(pool);
	job_fini(&j);
}

/* Killed, it keeps the output that had reached the parent: the two full
 * chunks sent before it said it started, not the 100 bytes still in its
 * buffer. */
static void test_isolated_killed_keeps_sent_output(void **state)
{
	ctp_pool *pool;
	const unsigned char *data;
	const void *p;
	struct job j;
	ctp_task *t;
	size_t len, bad = 0;

	(void)state;
	say_open();
	pool = iso_pool(1, 1, KILL_AFTER);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_partial_then_spin, NULL, 0, &j,
	                 NO_OPTS, &t), 0);
	heard_started();
	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	assert_int_equal(finish(t, &j), -ECANCELED);
	assert_int_equal(ctp_task_exit_signal(t), SIGKILL);
	assert_int_equal(ctp_task_output(t, &p, &len), 0);
	assert_int_equal(len % CHUNK, 0);
	assert_int_equal(len, 2 * CHUNK);
	data = p;
	for (size_t i = 0; i < len; i++)
		bad += data[i] != gen_byte(7, i);
	assert_int_equal(bad, 0);
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = 1, .killed = 1 });
	shutdown_ok(pool);
	say_close();
	job_fini(&j);
}

/* ---- a function that cancels its own token ------------------------------ */

static void self_cancel_case(bool linger)
{
	ctp_pool *pool = iso_pool(1, 1, KILL_AFTER);
	char in = linger;
	const struct woke *w;
	const void *data;
	struct job j;
	ctp_task *t;
	size_t len;

	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_self_cancel, &in, 1, &j, NO_OPTS,
	                 &t), 0);
	assert_int_equal(finish(t, &j), 5);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_output(t, &data, &len), 0);
	assert_int_equal(len, sizeof(*w));
	w = data;
	assert_int_equal(w->wait, 0);           /* this call fired it */
	assert_int_equal(w->reason, -ECANCELED);
	assert_int_equal(w->cancelled, 1);
	assert_int_equal(w->extra, -ECANCELED); /* a sleep sees it */
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = 1, .completed = 1 });
	/* its process survived and takes the next task */
	job_fini(&j);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "ok", 2, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(finish(t, &j), ECHO_RET);
	ctp_task_release(t);
	shutdown_ok(pool);
	job_fini(&j);
}

static void test_isolated_self_cancel_returns_normally(void **state)
{
	(void)state;
	self_cancel_case(false);
}

/* The parent's token never fired: kill_after does not apply, however long
 * the function takes after cancelling its own copy. */
static void test_isolated_self_cancel_then_works_on(void **state)
{
	(void)state;
	self_cancel_case(true);
}

/* ---- the copy taken at create ------------------------------------------- */

/* Output pending in a stdio buffer at create is flushed first, so no copy
 * writes it again (the worker process flushes its stdio after each task). */
static void test_isolated_stdio_not_duplicated(void **state)
{
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	char buf[64];
	size_t got = 0;
	FILE *f;
	int p[2];

	(void)state;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	f = fdopen(p[1], "w");
	assert_non_null(f);
	assert_int_equal(setvbuf(f, NULL, _IOFBF, 4096), 0);
	assert_true(fputs("before;", f) >= 0); /* pending at create */
	pool = iso_pool(1, 1, 0);
	assert_true(fputs("after;", f) >= 0);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(finish(t, &j), ECHO_RET);
	ctp_task_release(t);
	shutdown_ok(pool);
	assert_int_equal(fclose(f), 0); /* the last writer: EOF follows */
	for (;;) {
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		ssize_t n;

		assert_int_equal(poll(&pf, 1, (int)(BOUND / 1000000)), 1);
		n = read(p[0], buf + got, sizeof(buf) - 1 - got);
		assert_true(n >= 0);
		if (n == 0)
			break;
		got += (size_t)n;
	}
	buf[got] = '\0';
	assert_string_equal(buf, "before;after;");
	close(p[0]);
	job_fini(&j);
}

/* ---- nothing left behind ------------------------------------------------ */

/* Destroy with isolated tasks stuck in loops (default kill_after): it
 * returns, every process is gone and reaped, every descriptor closed. */
static void test_isolated_destroy_with_stuck_tasks_leaves_nothing(void **s)
{
	struct census c;
	char why[512], list0[1024];
	ctp_pool *pool;
	struct job j[3];
	ctp_task *t[3];
	int fds0, left;
	int64_t t0;

	(void)s;
	say_open();
	census_init(&c);
	fds0 = list_fds(list0, sizeof(list0));
	pool = iso_pool(2, 2, 0);
	census_add(&c);
	(void)census_server(&c);
	assert_true(c.n >= 3); /* the fork server and two workers */
	for (int i = 0; i < 3; i++) {
		job_init(&j[i]);
		assert_int_equal(iso_submit(pool, fn_spin, NULL, 0, &j[i],
		                 NO_OPTS, &t[i]), 0);
	}
	heard_started();
	heard_started();
	census_add(&c);
	t0 = tu_now_ns();
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(1) + WOKE);
	left = census_left(&c, false, why, sizeof(why));
	if (left != 0)
		fail_msg("%d processes left: %s", left, why);
	assert_fds(fds0, list0);
	/* the handles stay valid after destroy */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(finish(t[i], &j[i]), -ESHUTDOWN);
		assert_int_equal(ctp_task_exit_signal(t[i]), SIGKILL);
		assert_int_equal(ctp_task_state(t[i]), CTP_TASK_DONE);
	}
	assert_int_equal(finish(t[2], &j[2]), -ESHUTDOWN);
	assert_int_equal(ctp_task_state(t[2]), CTP_TASK_CANCELLED);
	for (int i = 0; i < 3; i++) {
		ctp_task_release(t[i]);
		job_fini(&j[i]);
	}
	say_close();
}

/* The fork server killed from outside: the running task's process goes
 * with it (-EOWNERDEAD), later tasks find no process and finish with
 * -EAGAIN without running, never hang; destroy still reaps everything. */
static void test_isolated_fork_server_gone(void **state)
{
	struct census c;
	char why[512], list0[1024];
	ctp_pool *pool;
	struct job j;
	ctp_task *t;
	int fds0, left;
	int64_t limit;
	pid_t pid;

	(void)state;
	say_open();
	census_init(&c);
	fds0 = list_fds(list0, sizeof(list0));
	pool = iso_pool(1, 1, CTP_SEC(30));
	census_add(&c);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_spin_pid, NULL, 0, &j, NO_OPTS,
	                 &t), 0);
	assert_true(hear(&pid, sizeof(pid), BOUND));
	assert_int_equal(kill(census_server(&c), SIGKILL), 0);
	assert_int_equal(finish(t, &j), -EOWNERDEAD);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	ctp_task_release(t);
	job_fini(&j);
	job_init(&j);
	assert_int_equal(iso_submit(pool, fn_echo, "x", 1, &j, NO_OPTS, &t),
	                 0);
	assert_int_equal(finish(t, &j), -EAGAIN);
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_exit_signal(t), 0);
	ctp_task_release(t);
	expect_counts(pool, (struct counts){ .submitted = 2, .crashed = 2 });
	assert_int_equal(stats_of(pool).processes, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	/* the orphans die of PR_SET_PDEATHSIG, on the kernel's time */
	limit = tu_now_ns() + BOUND;
	while ((left = census_left(&c, true, why, sizeof(why))) != 0 &&
	       tu_now_ns() < limit)
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	if (left != 0)
		fail_msg("%d processes left: %s", left, why);
	assert_fds(fds0, list0);
	say_close();
	job_fini(&j);
}

/* With an argument, runs only the tests whose names contain it. */
/* ctp_output_create: an output in this process's memory, as a thread-run
 * function of the isolated kind writes it (libctpool-redis does): what is
 * written comes back whole, max bounds it (-EMSGSIZE, keeping what fitted),
 * and a worker process's output is not one. */
static int write_three(const void *in, size_t in_len, ctp_output *out,
                       ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)token;
	return ctp_output_write(out, "abc", 3);
}

static void test_output_in_memory(void **state)
{
	static char big[100000];
	ctp_output *out;
	const void *data;
	size_t len, i;

	(void)state;
	assert_int_equal(ctp_output_create(NULL, 0), -EINVAL);
	assert_int_equal(ctp_output_create(&out, 0), 0);
	assert_int_equal(ctp_output_data(out, &data, &len), 0);
	assert_null(data);
	assert_int_equal(len, 0);
	assert_int_equal(write_three(NULL, 0, out, NULL), 0);
	for (i = 0; i < sizeof(big); i++)
		big[i] = (char)i;
	assert_int_equal(ctp_output_write(out, big, sizeof(big)), 0);
	assert_int_equal(ctp_output_write(out, NULL, 0), 0);
	assert_int_equal(ctp_output_write(out, NULL, 1), -EINVAL);
	assert_int_equal(ctp_output_data(out, &data, &len), 0);
	assert_int_equal(len, 3 + sizeof(big));
	assert_memory_equal(data, "abc", 3);
	assert_memory_equal((const char *)data + 3, big, sizeof(big));
	assert_int_equal(ctp_output_data(out, NULL, &len), -EINVAL);
	assert_int_equal(ctp_output_data(NULL, &data, &len), -EINVAL);
	ctp_output_free(out);
	ctp_output_free(NULL);

	assert_int_equal(ctp_output_create(&out, 5), 0);
	assert_int_equal(ctp_output_write(out, "abc", 3), 0);
	assert_int_equal(ctp_output_write(out, "defg", 4), -EMSGSIZE);
	assert_int_equal(ctp_output_write(out, "h", 1), -EMSGSIZE);
	assert_int_equal(ctp_output_data(out, &data, &len), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(data, "abcde", 5);
	ctp_output_free(out);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_isolated_enotsup_without_processes),
		cmocka_unit_test(test_isolated_einval),
		cmocka_unit_test(test_isolated_eagain_queue_full),
		cmocka_unit_test(test_isolated_emsgsize_input),
		cmocka_unit_test(test_isolated_emsgsize_output_keeps_what_fitted),
		cmocka_unit_test(test_isolated_output_einprogress_and_einval),
		cmocka_unit_test(test_isolated_empty_input_is_null),
		cmocka_unit_test(test_isolated_input_copied_at_submit),
		cmocka_unit_test(test_isolated_sees_program_as_at_create),
		cmocka_unit_test(test_isolated_done_gets_arg_once),
		cmocka_unit_test(test_isolated_stats_processes),
		cmocka_unit_test(test_isolated_at_most_min_threads_processes),
		cmocka_unit_test(test_isolated_killed_cancel_by_handle),
		cmocka_unit_test(test_isolated_killed_parent_token),
		cmocka_unit_test(test_isolated_killed_deadline),
		cmocka_unit_test(test_isolated_killed_shutdown_grace_forever),
		cmocka_unit_test(test_isolated_coop_sleep_woken),
		cmocka_unit_test(test_isolated_coop_poll_fd_woken),
		cmocka_unit_test(test_isolated_coop_watch_woken),
		cmocka_unit_test(test_isolated_coop_queue_pop_woken),
		cmocka_unit_test(test_isolated_coop_child_token_woken),
		cmocka_unit_test(test_isolated_leaked_child_token_pool_goes_on),
		cmocka_unit_test(test_isolated_token_reason_deadline),
		cmocka_unit_test(test_isolated_token_reason_shutdown),
		cmocka_unit_test(test_isolated_shutdown_drains_queued),
		cmocka_unit_test(test_isolated_fired_while_queued_never_runs),
		cmocka_unit_test(test_isolated_fired_while_waiting_for_process),
		cmocka_unit_test(test_isolated_crash_segv),
		cmocka_unit_test(test_isolated_crash_abort),
		cmocka_unit_test(test_isolated_crash_exit),
		cmocka_unit_test(test_isolated_crash_in_a_row),
		cmocka_unit_test(test_isolated_crash_out_of_memory),
		cmocka_unit_test(test_isolated_worker_killed_from_outside),
		cmocka_unit_test(test_isolated_idle_worker_killed_from_outside),
		cmocka_unit_test(test_isolated_idle_worker_death_reported_late),
		cmocka_unit_test(test_isolated_killed_before_it_read_its_task),
		cmocka_unit_test(test_isolated_io_round_trip),
		cmocka_unit_test(test_isolated_output_larger_than_input),
		cmocka_unit_test(test_isolated_killed_keeps_sent_output),
		cmocka_unit_test(test_isolated_self_cancel_returns_normally),
		cmocka_unit_test(test_isolated_self_cancel_then_works_on),
		cmocka_unit_test(test_isolated_stdio_not_duplicated),
		cmocka_unit_test(test_isolated_destroy_with_stuck_tasks_leaves_nothing),
		cmocka_unit_test(test_isolated_fork_server_gone),
		cmocka_unit_test(test_output_in_memory),
	};
	struct CMUnitTest pick[sizeof(tests) / sizeof(tests[0])];
	size_t n = 0;

	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
		if (argc < 2 || strstr(tests[i].name, argv[1]) != NULL)
			pick[n++] = tests[i];
	return _cmocka_run_group_tests("isolated", pick, n, NULL, NULL);
}
