/*
 * bench_isolated: isolated tasks (ctp_pool_submit_isolated), measured the
 * way bench/isolated_peers.py measures Python's process pools, and the
 * physical floors of the same operations.
 *
 * Usage:
 *   bench_isolated [--floor] <scenario> [--n N] [--warmup W] [--procs P]
 *                  [--timeout-ms T] [--kill-after-ms K]
 * Scenarios (the same names, options and work in isolated_peers.py):
 *   roundtrip    submit an empty task and wait for it, one at a time; pool
 *                of P threads and P processes. Figures rt_p50/p99/min/max.
 *   kill         a task spinning in for(;;) with opts.timeout = T on a pool
 *                with kill_after = K (1 thread, 1 process): late = wait
 *                returned - (submit + T + K), the overshoot past the hard
 *                limit; then an empty task submitted at once: its round
 *                trip is `replace` (the killed process's replacement).
 *   cancel-kill  the same spinning task, cancelled by handle once it runs:
 *                late = wait returned - (cancel + K).
 *   coop-cancel  a task in ctp_token_sleep(token, 60 s), cancelled by
 *                handle once it sleeps: cancel to wait returned (the token
 *                wakes the worker process, the function returns).
 *   throughput   N tiny tasks (8-byte input i, 8-byte output 2i+1, status
 *                i % 1000) submitted at once by one thread to a pool of P
 *                threads and P processes with room for all of them; from
 *                the first submit until ctp_pool_wait_idle returns.
 * With --floor the scenario's physical floor runs instead (peer=floor),
 * with the same N and the same waits around the timed part:
 *   roundtrip    16 bytes each way over a SOCK_SEQPACKET socketpair with a
 *                forked child, the parent blocked in recv.
 *   kill         late: pidfd_send_signal(SIGKILL) of a child spinning in
 *                for(;;) until its pidfd is readable (after sleeping T+K as
 *                ctpool's killer does); replace: fork() + _exit + waitpid.
 *   cancel-kill  the kill part of `kill`.
 *   coop-cancel  store + FUTEX_WAKE on a shared word a child sleeps on in
 *                FUTEX_WAIT, until its 16-byte reply arrives.
 *   throughput   P threads each ping-ponging 8 bytes (i -> 2i+1) with its
 *                own child over SOCK_SEQPACKET, N round trips in all.
 *
 * Output (stdout, nothing else goes there), one line per figure:
 *   peer=<p> scenario=<s> config=<c> figure=<f> value=<v> unit=<u>
 *   better=lower|higher version=<v> [n=.. min_us=.. max_us=..]
 * and, when a self-check or a call fails,
 *   peer=<p> scenario=<s> config=<c> error="<what>"       (exit status 1).
 * Self-checks: every task's status, state, output and exit signal; the
 * pool's stats (completed, killed, crashed, processes); no child process
 * left after ctp_pool_destroy.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctpool.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* ---- output --------------------------------------------------------------- */

static const char *peer = "ctpool";
static const char *scenario = "?";
static char        config[64] = "?";
static char        version[32];

static noreturn void fail(const char *fmt, ...)
{
	char    msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p != '\0'; p++)
		if (*p == '"' || *p == '\n')
			*p = '\'';
	printf("peer=%s scenario=%s config=%s error=\"%s\"\n", peer, scenario,
	       config, msg);
	fflush(stdout);
	exit(1);
}

#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

static void out_value(const char *figure, double value, const char *unit,
                      const char *better, const char *extra)
{
	printf("peer=%s scenario=%s config=%s figure=%s value=%.3f unit=%s "
	       "better=%s version=%s%s%s\n", peer, scenario, config, figure,
	       value, unit, better, version, extra != NULL ? " " : "",
	       extra != NULL ? extra : "");
	fflush(stdout);
}

/* ---- time and samples ----------------------------------------------------- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Idle time before sample i of the kill scenarios, the same sequence as
 * isolated_peers.py: 0 to 100 ms, spread evenly, so that a peer's polling
 * period (pebble checks its deadlines every 0.1 s) is met at every phase
 * rather than at the one a tight loop would lock onto. */
static int64_t jitter_ns(size_t i)
{
	return (int64_t)((i * 7919) % 100000) * 1000;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n), in microseconds (the same rule
 * as bench/driver.c and isolated_peers.py). */
static double pct_us(const int64_t *v, size_t n, unsigned p)
{
	size_t rank = (p * n + 99) / 100;

	return (double)v[rank > 0 ? rank - 1 : 0] / 1000.0;
}

/* Prints <name>_p50_us and _p99_us (and _min_us, _max_us if all) of v,
 * with more fields (note="...") if more is not NULL. */
static void out_latency(const char *name, int64_t *v, size_t n, bool all,
                        const char *more)
{
	char fig[64], extra[256];

	qsort(v, n, sizeof(*v), cmp_i64);
	snprintf(extra, sizeof(extra), "n=%zu min_us=%.3f max_us=%.3f%s%s", n,
	         (double)v[0] / 1000.0, (double)v[n - 1] / 1000.0,
	         more != NULL ? " " : "", more != NULL ? more : "");
	snprintf(fig, sizeof(fig), "%s_p50_us", name);
	out_value(fig, pct_us(v, n, 50), "us", "lower", extra);
	snprintf(fig, sizeof(fig), "%s_p99_us", name);
	out_value(fig, pct_us(v, n, 99), "us", "lower", extra);
	if (!all)
		return;
	snprintf(fig, sizeof(fig), "%s_min_us", name);
	out_value(fig, (double)v[0] / 1000.0, "us", "lower", extra);
	snprintf(fig, sizeof(fig), "%s_max_us", name);
	out_value(fig, (double)v[n - 1] / 1000.0, "us", "lower", extra);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	CHECK(p != NULL, "out of memory (%zu x %zu bytes)", n, size);
	return p;
}

/* ---- options -------------------------------------------------------------- */

struct options {
	size_t   n, warmup;
	unsigned procs;
	int64_t  timeout, kill_after; /* ns */
	bool     floor;
};

static noreturn void usage(const char *argv0)
{
	fprintf(stderr,
	        "usage: %s [--floor] roundtrip|kill|cancel-kill|coop-cancel|"
	        "throughput [--n N] [--warmup W] [--procs P] [--timeout-ms T] "
	        "[--kill-after-ms K]\n", argv0);
	exit(2);
}

static unsigned long parse_num(const char *argv0, const char *what,
                               const char *s, unsigned long lo,
                               unsigned long hi)
{
	char         *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s != NULL ? s : "", &end, 10);
	if (s == NULL || errno != 0 || *end != '\0' || end == s || v < lo ||
	    v > hi) {
		fprintf(stderr, "%s: bad value for %s: %s (%lu..%lu)\n", argv0,
		        what, s != NULL ? s : "(none)", lo, hi);
		exit(2);
	}
	return v;
}

/* ---- what runs in the worker processes ------------------------------------ */

/* Shared with every worker process: mapped before ctp_pool_create, so the
 * fork server and every worker it forks inherit it. */
struct shared {
	_Atomic uint64_t started;  /* bumped by a function once it runs */
	_Atomic uint32_t word;     /* the floor's futex word */
};

static struct shared *sh;

static int fn_empty(const void *in, size_t len, ctp_output *out,
                    ctp_token *token)
{
	(void)in; (void)len; (void)out; (void)token;
	return 0;
}

static int fn_spin(const void *in, size_t len, ctp_output *out,
                   ctp_token *token)
{
	(void)in; (void)len; (void)out; (void)token;
	atomic_fetch_add(&sh->started, 1);
	for (;;)
		__asm__ volatile("" ::: "memory"); /* never looks at its token */
	return 0;
}

static int fn_sleep(const void *in, size_t len, ctp_output *out,
                    ctp_token *token)
{
	int r;

	(void)in; (void)len;
	atomic_fetch_add(&sh->started, 1);
	r = ctp_token_sleep(token, CTP_SEC(60));
	(void)ctp_output_write(out, &r, sizeof(r));
	return r;
}

static int fn_tput(const void *in, size_t len, ctp_output *out,
                   ctp_token *token)
{
	uint64_t i, o;

	(void)token;
	if (len != sizeof(i))
		return -EPROTO;
	memcpy(&i, in, sizeof(i));
	o = 2 * i + 1;
	(void)ctp_output_write(out, &o, sizeof(o));
	return (int)(i % 1000);
}

/* ---- the pool ------------------------------------------------------------- */

static ctp_pool *make_pool(unsigned procs, int64_t kill_after, size_t cap)
{
	ctp_pool_opts o = { .threads = procs, .processes = procs,
	                    .kill_after = kill_after, .queue_capacity = cap,
	                    .name = "bi" };
	ctp_pool     *pool;
	ctp_stats     st;
	int           r;

	r = ctp_pool_create(&pool, &o);
	CHECK(r == 0, "ctp_pool_create: %s", ctp_strerror(r));
	ctp_pool_stats(pool, &st);
	CHECK(st.processes == procs && st.threads == procs,
	      "after create: %u processes, %u threads (want %u)",
	      st.processes, st.threads, procs);
	return pool;
}

/* Stats check, shutdown, destroy, and no child process left behind. */
static void end_pool(ctp_pool *pool, uint64_t completed, uint64_t killed,
                     uint64_t timed_out, unsigned procs)
{
	ctp_stats st;
	int       r;

	r = ctp_pool_wait_idle(pool, CTP_SEC(60));
	CHECK(r == 0, "ctp_pool_wait_idle: %s", ctp_strerror(r));
	ctp_pool_stats(pool, &st);
	CHECK(st.completed == completed && st.killed == killed &&
	      st.crashed == 0 && st.cancelled == 0 &&
	      st.timed_out == timed_out &&
	      st.submitted == completed + killed + timed_out,
	      "stats: submitted %llu completed %llu killed %llu crashed %llu "
	      "cancelled %llu timed_out %llu (want completed %llu killed %llu "
	      "timed_out %llu)",
	      (unsigned long long)st.submitted,
	      (unsigned long long)st.completed, (unsigned long long)st.killed,
	      (unsigned long long)st.crashed, (unsigned long long)st.cancelled,
	      (unsigned long long)st.timed_out, (unsigned long long)completed,
	      (unsigned long long)killed, (unsigned long long)timed_out);
	CHECK(st.processes == procs, "stats.processes %u at the end, want %u",
	      st.processes, procs);
	r = ctp_pool_shutdown(pool, CTP_SEC(10), CTP_SEC(10));
	CHECK(r == 0, "ctp_pool_shutdown: %s", ctp_strerror(r));
	r = ctp_pool_destroy(pool);
	CHECK(r == 0, "ctp_pool_destroy: %s", ctp_strerror(r));
	CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD,
	      "a child process is left after ctp_pool_destroy");
}

/* Submits fn and waits for it; checks state, status, exit signal. */
static ctp_task *run_one(ctp_pool *pool, ctp_isolated_fn fn,
                         const ctp_task_opts *o, int want, int want_sig,
                         const char *what)
{
	ctp_task *t;
	int       r, status = 1;

	r = ctp_pool_submit_isolated(pool, fn, NULL, 0, NULL, o, &t);
	CHECK(r == 0, "%s: submit: %s", what, ctp_strerror(r));
	r = ctp_task_wait(t, CTP_SEC(60), &status);
	CHECK(r == 0, "%s: wait: %s", what, ctp_strerror(r));
	CHECK(status == want && ctp_task_state(t) == CTP_TASK_DONE &&
	      ctp_task_exit_signal(t) == want_sig,
	      "%s: status %d (%s), state %d, exit signal %d; want status %d, "
	      "state DONE, signal %d", what, status, ctp_strerror(status),
	      ctp_task_state(t), ctp_task_exit_signal(t), want, want_sig);
	return t;
}

/* Waits until a function has bumped sh->started to `want`. */
static void wait_started(uint64_t want, const char *what)
{
	int64_t end = now_ns() + CTP_SEC(30);

	while (atomic_load(&sh->started) < want) {
		CHECK(now_ns() < end, "%s: the function did not start in 30 s",
		      what);
		sleep_ns(CTP_USEC(20));
	}
}

/* ---- ctpool scenarios ----------------------------------------------------- */

static void ctpool_roundtrip(const struct options *o)
{
	ctp_pool *pool = make_pool(o->procs, 0, 0);
	int64_t  *v = xcalloc(o->n, sizeof(*v));

	for (size_t i = 0; i < o->warmup + o->n; i++) {
		int64_t   t0 = now_ns();
		ctp_task *t = run_one(pool, fn_empty, NULL, 0, 0, "empty task");
		int64_t   t1 = now_ns();
		const void *d;
		size_t    len;

		CHECK(ctp_task_output(t, &d, &len) == 0 && len == 0,
		      "empty task: output of %zu bytes", len);
		ctp_task_release(t);
		if (i >= o->warmup)
			v[i - o->warmup] = t1 - t0;
	}
	end_pool(pool, o->warmup + o->n, 0, 0, o->procs);
	out_latency("rt", v, o->n, true, NULL);
	free(v);
}

static void ctpool_kill(const struct options *o)
{
	ctp_pool     *pool = make_pool(1, o->kill_after, 0);
	ctp_task_opts to = { .timeout = o->timeout };
	int64_t      *late = xcalloc(o->n, sizeof(*late));
	int64_t      *repl = xcalloc(o->n, sizeof(*repl));

	size_t        unstarted = 0, k = 0;
	char          note[160];

	/* k counts the kills; i the attempts (the jitter's index) */
	for (size_t i = 0; k < o->warmup + o->n; i++) {
		int64_t   t0, t1, t2, t3;
		ctp_task *t;
		uint64_t  before = atomic_load(&sh->started);
		int       r, status = 1;

		sleep_ns(jitter_ns(i));
		t0 = now_ns();
		r = ctp_pool_submit_isolated(pool, fn_spin, NULL, 0, NULL, &to,
		                             &t);
		CHECK(r == 0, "spinning task: submit: %s", ctp_strerror(r));
		r = ctp_task_wait(t, CTP_SEC(60), &status);
		t1 = now_ns();
		CHECK(r == 0, "spinning task: wait: %s", ctp_strerror(r));
		if (ctp_task_state(t) == CTP_TASK_CANCELLED) {
			/* Its deadline passed before a pool thread started it
			 * (a busy machine): the contract's "never ran", not a
			 * kill, so not a sample; counted, and checked: its
			 * function must not have started. */
			CHECK(status == -ETIMEDOUT && ctp_task_exit_signal(t) == 0 &&
			      atomic_load(&sh->started) == before,
			      "spinning task: never ran (state CANCELLED) but "
			      "status %d, exit signal %d, started %d", status,
			      ctp_task_exit_signal(t),
			      atomic_load(&sh->started) != before);
			ctp_task_release(t);
			CHECK(++unstarted <= o->warmup + o->n, "%zu spinning "
			      "tasks never started before their deadline",
			      unstarted);
			continue;
		}
		CHECK(status == -ETIMEDOUT && ctp_task_state(t) == CTP_TASK_DONE &&
		      ctp_task_exit_signal(t) == SIGKILL,
		      "spinning task with a timeout: status %d (%s), state %d, "
		      "exit signal %d; want status -ETIMEDOUT, state DONE, "
		      "signal SIGKILL", status, ctp_strerror(status),
		      ctp_task_state(t), ctp_task_exit_signal(t));
		ctp_task_release(t);
		t2 = now_ns();
		t = run_one(pool, fn_empty, NULL, 0, 0, "task after a kill");
		t3 = now_ns();
		ctp_task_release(t);
		if (k >= o->warmup) {
			late[k - o->warmup] = t1 - (t0 + o->timeout + o->kill_after);
			repl[k - o->warmup] = t3 - t2;
		}
		k++;
	}
	end_pool(pool, k, k, unstarted, 1);
	snprintf(note, sizeof(note), "note=\"%zu of %zu tasks never started "
	         "before their deadline (a busy machine): not samples\"",
	         unstarted, unstarted + k);
	out_latency("late", late, o->n, false, unstarted ? note : NULL);
	out_latency("replace", repl, o->n, false, unstarted ? note : NULL);
	free(late);
	free(repl);
}

static void ctpool_cancel(const struct options *o, bool coop)
{
	ctp_pool *pool = make_pool(1, coop ? 0 : o->kill_after, 0);
	int64_t  *v = xcalloc(o->n, sizeof(*v));
	const char *what = coop ? "sleeping task" : "spinning task";

	atomic_store(&sh->started, 0);
	for (size_t i = 0; i < o->warmup + o->n; i++) {
		ctp_task *t;
		int64_t   t0, t1;
		int       r, status = 1;

		if (!coop)
			sleep_ns(jitter_ns(i));
		r = ctp_pool_submit_isolated(pool, coop ? fn_sleep : fn_spin,
		                             NULL, 0, NULL, NULL, &t);
		CHECK(r == 0, "%s: submit: %s", what, ctp_strerror(r));
		wait_started(i + 1, what);
		sleep_ns(CTP_MSEC(1)); /* it is in its sleep (or loop) now */
		t0 = now_ns();
		r = ctp_task_cancel(t);
		CHECK(r == -EINPROGRESS, "%s: cancel: %s (want -EINPROGRESS)",
		      what, ctp_strerror(r));
		r = ctp_task_wait(t, CTP_SEC(60), &status);
		t1 = now_ns();
		CHECK(r == 0, "%s: wait: %s", what, ctp_strerror(r));
		CHECK(status == -ECANCELED && ctp_task_state(t) == CTP_TASK_DONE &&
		      ctp_task_exit_signal(t) == (coop ? 0 : SIGKILL),
		      "%s: status %d (%s), state %d, exit signal %d after cancel",
		      what, status, ctp_strerror(status), ctp_task_state(t),
		      ctp_task_exit_signal(t));
		if (coop) {
			const void *d;
			size_t      len;
			int         got;

			CHECK(ctp_task_output(t, &d, &len) == 0 &&
			      len == sizeof(got), "sleeping task: output of %zu "
			      "bytes", len);
			memcpy(&got, d, sizeof(got));
			CHECK(got == -ECANCELED, "ctp_token_sleep in the worker "
			      "process returned %d (%s)", got, ctp_strerror(got));
		}
		ctp_task_release(t);
		/* the pool goes on (untimed, as in isolated_peers.py) */
		ctp_task_release(run_one(pool, fn_empty, NULL, 0, 0,
		                         "task after a cancel"));
		if (i >= o->warmup)
			v[i - o->warmup] = t1 - t0 - (coop ? 0 : o->kill_after);
	}
	/* a cooperative task returned: completed; a killed one: killed */
	end_pool(pool, (o->warmup + o->n) * (coop ? 2 : 1),
	         coop ? 0 : o->warmup + o->n, 0, 1);
	out_latency(coop ? "cancel" : "late", v, o->n, false, NULL);
	free(v);
}

static int tput_round(ctp_pool *pool, size_t n, uint64_t base,
                      ctp_task **h)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t x = base + i;
		int      r = ctp_pool_submit_isolated(pool, fn_tput, &x,
		                                     sizeof(x), NULL, NULL, &h[i]);

		CHECK(r == 0, "throughput: submit %zu: %s", i, ctp_strerror(r));
	}
	return ctp_pool_wait_idle(pool, CTP_SEC(300));
}

static void tput_check(ctp_task **h, size_t n, uint64_t base)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t    x = base + i, y;
		const void *d;
		size_t      len;
		int         status = 1, r;

		r = ctp_task_wait(h[i], 0, &status);
		CHECK(r == 0 && status == (int)(x % 1000) &&
		      ctp_task_exit_signal(h[i]) == 0,
		      "throughput: task %zu: wait %s, status %d (want %d)", i,
		      ctp_strerror(r), status, (int)(x % 1000));
		CHECK(ctp_task_output(h[i], &d, &len) == 0 && len == sizeof(y),
		      "throughput: task %zu: output of %zu bytes", i, len);
		memcpy(&y, d, sizeof(y));
		CHECK(y == 2 * x + 1, "throughput: task %zu: output %llu, want "
		      "%llu", i, (unsigned long long)y,
		      (unsigned long long)(2 * x + 1));
		ctp_task_release(h[i]);
	}
}

static void ctpool_throughput(const struct options *o)
{
	size_t     all = o->warmup > o->n ? o->warmup : o->n;
	ctp_pool  *pool = make_pool(o->procs, 0, all);
	ctp_task **h = xcalloc(all, sizeof(*h));
	int64_t    t0, t1;
	char       extra[64];
	int        r;

	r = tput_round(pool, o->warmup, 1000000, h);
	CHECK(r == 0, "throughput: warm-up wait_idle: %s", ctp_strerror(r));
	tput_check(h, o->warmup, 1000000);
	t0 = now_ns();
	r = tput_round(pool, o->n, 0, h);
	t1 = now_ns();
	CHECK(r == 0, "throughput: wait_idle: %s", ctp_strerror(r));
	tput_check(h, o->n, 0);
	end_pool(pool, o->warmup + o->n, 0, 0, o->procs);
	snprintf(extra, sizeof(extra), "n=%zu seconds=%.3f", o->n,
	         (double)(t1 - t0) / 1e9);
	out_value("tasks_per_s", (double)o->n * 1e9 / (double)(t1 - t0),
	          "tasks/s", "higher", extra);
	free(h);
}

/* ---- floors --------------------------------------------------------------- */

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static long futex_(_Atomic uint32_t *w, int op, uint32_t val)
{
	return syscall(SYS_futex, (uint32_t *)w, op, val, NULL, NULL, 0);
}

static void xsend(int fd, const void *p, size_t n)
{
	ssize_t r;

	do
		r = send(fd, p, n, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	CHECK(r == (ssize_t)n, "send: %s", r < 0 ? strerror(errno) : "short");
}

/* recv of exactly n bytes; false at EOF */
static bool xrecv(int fd, void *p, size_t n)
{
	ssize_t r;

	do
		r = recv(fd, p, n, 0);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return false;
	CHECK(r == (ssize_t)n, "recv: %s", r < 0 ? strerror(errno) : "short");
	return true;
}

static void reap_exited(pid_t pid)
{
	int st;

	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
	      WEXITSTATUS(st) == 0, "floor child %d did not exit cleanly",
	      (int)pid);
}

/* The parent's ends of the echo children made so far: a new child closes
 * them, so that each child sees EOF when the parent closes its end. */
static int    echo_fds[CTP_MAX_PROCESSES];
static size_t echo_nfds;

/* A child that answers each 16-byte message {seq, x} with {seq, 2x+1}
 * until EOF; returns the parent's end. */
static int echo_child(pid_t *pid)
{
	int sv[2];

	CHECK(echo_nfds < CTP_MAX_PROCESSES, "too many echo children");
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0,
	      "socketpair: %s", strerror(errno));
	*pid = fork();
	CHECK(*pid >= 0, "fork: %s", strerror(errno));
	if (*pid == 0) {
		uint64_t m[2];

		for (size_t k = 0; k < echo_nfds; k++)
			close(echo_fds[k]);
		close(sv[0]);
		while (xrecv(sv[1], m, sizeof(m))) {
			m[1] = 2 * m[1] + 1;
			xsend(sv[1], m, sizeof(m));
		}
		_exit(0);
	}
	close(sv[1]);
	echo_fds[echo_nfds++] = sv[0];
	return sv[0];
}

static void echo_once(int fd, uint64_t seq)
{
	uint64_t m[2] = { seq, seq }, r[2];

	xsend(fd, m, sizeof(m));
	CHECK(xrecv(fd, r, sizeof(r)) && r[0] == seq && r[1] == 2 * seq + 1,
	      "floor: wrong echo for %llu", (unsigned long long)seq);
}

static void floor_roundtrip(const struct options *o)
{
	pid_t    pid;
	int      fd = echo_child(&pid);
	int64_t *v = xcalloc(o->n, sizeof(*v));

	for (size_t i = 0; i < o->warmup + o->n; i++) {
		int64_t t0 = now_ns();

		echo_once(fd, i);
		if (i >= o->warmup)
			v[i - o->warmup] = now_ns() - t0;
	}
	close(fd);
	reap_exited(pid);
	out_latency("rt", v, o->n, true, NULL);
	free(v);
}

/* One kill of a spinning child, after sleeping `before` ns: SIGKILL to
 * pidfd readable, in ns; checks the child was killed by SIGKILL. */
static int64_t floor_kill_once(int64_t before)
{
	int      p[2], pfd;
	pid_t    pid;
	char     c;
	int64_t  t0, t1;
	siginfo_t si;
	struct pollfd pf;

	CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(p[0]);
		if (write(p[1], "R", 1) != 1)
			_exit(1);
		for (;;)
			__asm__ volatile("" ::: "memory");
	}
	close(p[1]);
	pfd = pidfd_open_(pid);
	CHECK(pfd >= 0, "pidfd_open: %s", strerror(errno));
	CHECK(read(p[0], &c, 1) == 1 && c == 'R', "spinning child did not "
	      "start");
	close(p[0]);
	sleep_ns(before);
	t0 = now_ns();
	CHECK(syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0) == 0,
	      "pidfd_send_signal: %s", strerror(errno));
	pf = (struct pollfd){ .fd = pfd, .events = POLLIN };
	CHECK(poll(&pf, 1, 60000) == 1, "pidfd not readable after SIGKILL");
	t1 = now_ns();
	memset(&si, 0, sizeof(si));
	CHECK(waitid(P_PIDFD, (id_t)pfd, &si, WEXITED) == 0 &&
	      si.si_code == CLD_KILLED && si.si_status == SIGKILL,
	      "spinning child: not killed by SIGKILL");
	close(pfd);
	return t1 - t0;
}

static void floor_kill(const struct options *o, bool with_replace)
{
	int64_t *late = xcalloc(o->n, sizeof(*late));

	for (size_t i = 0; i < o->warmup + o->n; i++) {
		int64_t d;

		sleep_ns(jitter_ns(i));
		d = floor_kill_once(with_replace ?
		                    o->timeout + o->kill_after : CTP_MSEC(1));

		if (i >= o->warmup)
			late[i - o->warmup] = d;
	}
	out_latency("late", late, o->n, false, NULL);
	if (with_replace) {
		for (size_t i = 0; i < o->warmup + o->n; i++) {
			int64_t t0 = now_ns();
			pid_t   pid = fork();

			CHECK(pid >= 0, "fork: %s", strerror(errno));
			if (pid == 0)
				_exit(0);
			reap_exited(pid);
			if (i >= o->warmup)
				late[i - o->warmup] = now_ns() - t0;
		}
		out_latency("replace", late, o->n, false, NULL);
	}
	free(late);
}

static void floor_coop(const struct options *o)
{
	int      sv[2];
	pid_t    pid;
	int64_t *v = xcalloc(o->n, sizeof(*v));
	uint64_t m[2];

	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0,
	      "socketpair: %s", strerror(errno));
	atomic_store(&sh->word, 0);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		/* each round: {seq} arms it; it says so, sleeps on the shared
		 * word until the parent sets it to seq, answers {seq, word} */
		while (xrecv(sv[1], m, sizeof(m))) {
			uint32_t w;

			xsend(sv[1], m, sizeof(m));
			while ((w = atomic_load(&sh->word)) != (uint32_t)m[0])
				futex_(&sh->word, FUTEX_WAIT, w);
			m[1] = w;
			xsend(sv[1], m, sizeof(m));
		}
		_exit(0);
	}
	close(sv[1]);
	for (size_t i = 0; i < o->warmup + o->n; i++) {
		uint64_t seq = i + 1;
		int64_t  t0, t1;

		m[0] = seq;
		m[1] = 0;
		xsend(sv[0], m, sizeof(m));
		CHECK(xrecv(sv[0], m, sizeof(m)) && m[0] == seq,
		      "floor: child not armed");
		sleep_ns(CTP_MSEC(1)); /* it is in FUTEX_WAIT now */
		t0 = now_ns();
		atomic_store(&sh->word, (uint32_t)seq);
		futex_(&sh->word, FUTEX_WAKE, 1);
		CHECK(xrecv(sv[0], m, sizeof(m)) && m[0] == seq &&
		      m[1] == (uint32_t)seq, "floor: wrong wake reply");
		t1 = now_ns();
		if (i >= o->warmup)
			v[i - o->warmup] = t1 - t0;
	}
	close(sv[0]);
	reap_exited(pid);
	out_latency("cancel", v, o->n, false, NULL);
	free(v);
}

struct pinger {
	pthread_t      th;
	int            fd;
	size_t         n;
	uint64_t       base;
	pthread_barrier_t *go;
};

static void *pinger_main(void *arg)
{
	struct pinger *p = arg;

	pthread_barrier_wait(p->go);
	for (size_t i = 0; i < p->n; i++)
		echo_once(p->fd, p->base + i);
	return NULL;
}

static void floor_throughput(const struct options *o)
{
	struct pinger    *p = xcalloc(o->procs, sizeof(*p));
	pid_t            *pid = xcalloc(o->procs, sizeof(*pid));
	pthread_barrier_t go;
	int64_t           t0, t1;
	char              extra[64];

	/* every child before any thread (like ctpool's processes) */
	for (unsigned k = 0; k < o->procs; k++)
		p[k].fd = echo_child(&pid[k]);
	for (unsigned k = 0; k < o->procs; k++)
		for (size_t i = 0; i < o->warmup / o->procs; i++)
			echo_once(p[k].fd, i);
	pthread_barrier_init(&go, NULL, o->procs + 1);
	for (unsigned k = 0; k < o->procs; k++) {
		p[k].n = o->n / o->procs + (k < o->n % o->procs);
		p[k].base = k * (o->n + 1);
		p[k].go = &go;
		CHECK(pthread_create(&p[k].th, NULL, pinger_main, &p[k]) == 0,
		      "pthread_create failed");
	}
	t0 = now_ns();
	pthread_barrier_wait(&go);
	for (unsigned k = 0; k < o->procs; k++)
		pthread_join(p[k].th, NULL);
	t1 = now_ns();
	for (unsigned k = 0; k < o->procs; k++) {
		close(p[k].fd);
		reap_exited(pid[k]);
	}
	pthread_barrier_destroy(&go);
	snprintf(extra, sizeof(extra), "n=%zu seconds=%.3f", o->n,
	         (double)(t1 - t0) / 1e9);
	out_value("tasks_per_s", (double)o->n * 1e9 / (double)(t1 - t0),
	          "tasks/s", "higher", extra);
	free(p);
	free(pid);
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv)
{
	struct options o = { .n = 0, .warmup = SIZE_MAX, .procs = 1,
	                     .timeout = CTP_MSEC(10),
	                     .kill_after = CTP_MSEC(10) };
	unsigned v = ctp_version();
	int      i = 1;

	if (i < argc && strcmp(argv[i], "--floor") == 0) {
		o.floor = true;
		i++;
	}
	if (i >= argc)
		usage(argv[0]);
	scenario = argv[i++];
	for (; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--floor") == 0) {
			o.floor = true;
			continue;
		}
		if (strcmp(a, "--n") == 0)
			o.n = parse_num(argv[0], a, val, 1, 100000000);
		else if (strcmp(a, "--warmup") == 0)
			o.warmup = parse_num(argv[0], a, val, 0, 100000000);
		else if (strcmp(a, "--procs") == 0)
			o.procs = (unsigned)parse_num(argv[0], a, val, 1,
			                              CTP_MAX_PROCESSES);
		else if (strcmp(a, "--timeout-ms") == 0)
			o.timeout = CTP_MSEC(parse_num(argv[0], a, val, 1,
			                               600000));
		else if (strcmp(a, "--kill-after-ms") == 0)
			o.kill_after = CTP_MSEC(parse_num(argv[0], a, val, 1,
			                                  600000));
		else
			usage(argv[0]);
		i++;
	}
	if (o.floor)
		peer = "floor";
	snprintf(version, sizeof(version), "%u.%u.%u", v >> 16, (v >> 8) & 255,
	         v & 255);
	if (o.floor)
		snprintf(version, sizeof(version), "linux");
	/* Config labels: the same rule as isolated_peers.py. */
	if (strcmp(scenario, "roundtrip") == 0 ||
	    strcmp(scenario, "throughput") == 0) {
		if (o.n == 0)
			o.n = 20000;
		snprintf(config, sizeof(config), "t%up%u", o.procs, o.procs);
	} else if (strcmp(scenario, "kill") == 0) {
		o.procs = 1;
		snprintf(config, sizeof(config), "T%lldms+K%lldms",
		         (long long)(o.timeout / 1000000),
		         (long long)(o.kill_after / 1000000));
	} else if (strcmp(scenario, "cancel-kill") == 0) {
		o.procs = 1;
		snprintf(config, sizeof(config), "K%lldms",
		         (long long)(o.kill_after / 1000000));
	} else if (strcmp(scenario, "coop-cancel") == 0) {
		o.procs = 1;
		snprintf(config, sizeof(config), "sleep60s");
	} else {
		fprintf(stderr, "%s: unknown scenario %s\n", argv[0], scenario);
		usage(argv[0]);
	}
	if (o.n == 0)
		o.n = 200;
	/* the same defaults as isolated_peers.py */
	if (o.warmup == SIZE_MAX && (strcmp(scenario, "roundtrip") == 0 ||
	    strcmp(scenario, "throughput") == 0))
		o.warmup = o.n / 10 < 1000 ? o.n / 10 : 1000;
	else if (o.warmup == SIZE_MAX)
		o.warmup = o.n / 10 < 3 ? o.n / 10 : 3;

	/* before ctp_pool_create: the fork server and its workers inherit it */
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
	          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh != MAP_FAILED, "mmap: %s", strerror(errno));

	if (strcmp(scenario, "roundtrip") == 0)
		o.floor ? floor_roundtrip(&o) : ctpool_roundtrip(&o);
	else if (strcmp(scenario, "kill") == 0)
		o.floor ? floor_kill(&o, true) : ctpool_kill(&o);
	else if (strcmp(scenario, "cancel-kill") == 0)
		o.floor ? floor_kill(&o, false) : ctpool_cancel(&o, false);
	else if (strcmp(scenario, "coop-cancel") == 0)
		o.floor ? floor_coop(&o) : ctpool_cancel(&o, true);
	else
		o.floor ? floor_throughput(&o) : ctpool_throughput(&o);
	return 0;
}
