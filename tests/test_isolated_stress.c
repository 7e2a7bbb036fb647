/*
 * Stress suite for isolated tasks: many tasks of every outcome at once.
 *
 *   mixed                 10,000 isolated tasks: echoes, tasks cancelled
 *                         while queued, cooperative tasks cancelled while
 *                         running, tasks that ignore their token and are
 *                         killed (by handle, or by a deadline), crashes.
 *                         done runs exactly once each with the status of its
 *                         kind, the stats add up to what was seen, and
 *                         destroy leaves no process, zombie or descriptor.
 *   concurrent_cancel     several threads submit and cancel at once (by
 *                         handle, at once or a little later, and through a
 *                         parent token of their own), with crashes mixed in.
 *   create_destroy        pools with worker processes come and go, some
 *                         with a task stuck in a loop at destroy.
 *
 * Rules as in test_isolated.c: the functions run in worker processes and
 * report only through their status, output and exit; they say "I started"
 * (their index) through a pipe made before the pool; threads other than
 * the test's only record, and every check runs on the test's own thread
 * once the library has said the task finished (CHECK counts, so that a
 * failing run still cleans up). A function meant to die of SIGSEGV resets
 * it to SIG_DFL first: the copy carries cmocka's and the sanitizers'
 * handlers.
 *
 * CTP_STRESS_SCALE=<n> divides the task counts by n (scripts/test.sh: 4
 * under ASan, 10 under TSan); ThreadSanitizer builds divide by 4 more on
 * their own (every worker process is instrumented too, on two CPUs shared
 * with the spinning ones).
 *
 * Before a1481fd, create_destroy failed now and then (plain, ASan and
 * TSan: the program's stdout closed by the library) through the bug that
 * test_isolated.c's idle-worker and killed-before-it-read tests pin down:
 * a process killed before it read its task, the ECONNRESET that follows,
 * and descriptors closed from an uninitialised array.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
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

/* kill_after for the mixed run: long enough that a cooperative function
 * always returns first, short enough that the killed ones do not
 * dominate. The slowest cooperative stop of a run (cancel to done, two
 * CPUs) was measured at 22-32 ms plain, 40-60 ms under ASan, 80-600 ms
 * under TSan (every worker process is instrumented too). */
#if defined(ISO_TSAN)
#define TSAN_DIV   4
#define KILL_AFTER CTP_SEC(2)
#elif defined(ISO_ASAN)
#define TSAN_DIV   1
#define KILL_AFTER CTP_MSEC(500)
#else
#define TSAN_DIV   1
#define KILL_AFTER CTP_MSEC(250)
#endif

#define ECHO_RET 11

static int failures; /* test thread only */

static unsigned long scaled(unsigned long n, unsigned long min)
{
	return tu_scaled(n / TSAN_DIV, min);
}

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

/* Reads one index; waits up to bound_ns (0: only if one is there). */
static bool hear_index(uint32_t *idx, int64_t bound_ns)
{
	struct pollfd pf = { .fd = g_say[0], .events = POLLIN };

	if (poll(&pf, 1, (int)(bound_ns / 1000000)) <= 0)
		return false;
	/* 4 bytes, written at once (< PIPE_BUF): never split */
	return read(g_say[0], idx, sizeof(*idx)) == (ssize_t)sizeof(*idx);
}

/* ---- the isolated functions (run in worker processes) ------------------- */

/* in: the task's index (4 bytes), then anything. */
static uint32_t index_of(const void *in, size_t in_len)
{
	uint32_t idx = UINT32_MAX;

	if (in_len >= sizeof(idx))
		memcpy(&idx, in, sizeof(idx));
	return idx;
}

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

/* Sleeps on its token, says nothing: cancelled at once after submit. */
static int fn_sleep_quiet(const void *in, size_t in_len, ctp_output *out,
                          ctp_token *token)
{
	int r = ctp_token_sleep(token, CTP_SEC(60));

	(void)in;
	(void)in_len;
	(void)out;
	return r == 0 ? -1002 : ctp_token_reason(token);
}

/* Says its index, then sleeps on its token. */
static int fn_sleep_say(const void *in, size_t in_len, ctp_output *out,
                        ctp_token *token)
{
	uint32_t idx = index_of(in, in_len);

	(void)!write(g_say[1], &idx, sizeof(idx));
	return fn_sleep_quiet(in, in_len, out, token);
}

/* Ignores its token for good, at the lowest priority: the killed ones
 * must not starve the cooperative ones on a machine of two CPUs (a
 * cooperative function late by kill_after is killed too). */
static void spin_forever(void)
{
	struct sched_param sp = { 0 };

	(void)sched_setscheduler(0, SCHED_IDLE, &sp);
	for (;;)
		tu_cpu_relax();
}

/* Says its index, then ignores its token. */
static int fn_spin_say(const void *in, size_t in_len, ctp_output *out,
                       ctp_token *token)
{
	uint32_t idx = index_of(in, in_len);

	(void)out;
	(void)token;
	(void)!write(g_say[1], &idx, sizeof(idx));
	spin_forever();
	return 0;
}

static int fn_spin_quiet(const void *in, size_t in_len, ctp_output *out,
                         ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	spin_forever();
	return 0;
}

static int fn_segv(const void *in, size_t in_len, ctp_output *out,
                   ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	signal(SIGSEGV, SIG_DFL);
	raise(SIGSEGV);
	return -1003;
}

/* ---- one task and what became of it ------------------------------------- */

enum kind {
	K_ECHO,     /* returns ECHO_RET, output == input */
	K_QCANCEL,  /* cancelled right after submit (mostly still queued) */
	K_RCANCEL,  /* cancelled once it said it runs; cooperative */
	K_KILL,     /* cancelled once it said it runs; ignores it: killed */
	K_DEADLINE, /* ignores its token; a short timeout */
	K_CRASH,    /* SIGSEGV */
	K_PARENT,   /* cooperative; its submitter's parent token fires */
	K_LATE,     /* cooperative; cancelled after a random short delay */
};

struct item {
	ctp_task  *t;
	enum kind  kind;
	int        cancel;     /* ctp_task_cancel's answer, UNSET if none */
	int64_t    cancel_ns;  /* when it was cancelled (K_RCANCEL, K_KILL) */
	uint32_t   seed;       /* echo input */
	atomic_int calls;      /* done */
	atomic_int status;
	_Atomic int64_t done_ns;
};

static void item_done(void *arg, int status)
{
	struct item *it = arg;

	atomic_store(&it->done_ns, tu_now_ns());
	atomic_store(&it->status, status);
	atomic_fetch_add(&it->calls, 1);
}

static size_t echo_input(uint32_t idx, uint32_t seed, unsigned char *buf)
{
	size_t len = sizeof(idx) + seed % 200;

	memcpy(buf, &idx, sizeof(idx));
	for (size_t i = sizeof(idx); i < len; i++)
		buf[i] = (unsigned char)(seed >> (i % 24)) ^ (unsigned char)i;
	return len;
}

static int submit_item(ctp_pool *pool, struct item *it, uint32_t idx,
                       ctp_token *parent)
{
	static const ctp_isolated_fn fns[] = {
		[K_ECHO] = fn_echo, [K_QCANCEL] = fn_sleep_quiet,
		[K_RCANCEL] = fn_sleep_say, [K_KILL] = fn_spin_say,
		[K_DEADLINE] = fn_spin_quiet, [K_CRASH] = fn_segv,
		[K_PARENT] = fn_sleep_quiet, [K_LATE] = fn_sleep_quiet,
	};
	ctp_task_opts o = { .done = item_done, .queue_wait = CTP_FOREVER };
	unsigned char in[256];
	size_t len = echo_input(idx, it->seed, in);

	if (it->kind == K_DEADLINE)
		o.timeout = CTP_MSEC(5 + it->seed % 25);
	if (it->kind == K_PARENT)
		o.parent = parent;
	atomic_init(&it->calls, 0);
	atomic_init(&it->status, UNSET);
	it->cancel = UNSET;
	return ctp_pool_submit_isolated(pool, fns[it->kind], in, len, it, &o,
	                                &it->t);
}

/* What the stats must say, from what was seen. */
struct tally {
	uint64_t completed, cancelled, timed_out, killed, crashed;
};

/* Checks one finished task against its kind; adds it to the tally. */
static void check_item(struct item *it, uint32_t idx, struct tally *y)
{
	int status = UNSET, st, sig;

	CHECK(ctp_task_wait(it->t, BOUND, &status) == 0, "task %u hangs",
	      idx);
	st = ctp_task_state(it->t);
	sig = ctp_task_exit_signal(it->t);
	CHECK(atomic_load(&it->calls) == 1, "task %u: done ran %d times", idx,
	      atomic_load(&it->calls));
	CHECK(atomic_load(&it->status) == status, "task %u: done %d, wait %d",
	      idx, atomic_load(&it->status), status);
	switch (it->kind) {
	case K_ECHO: {
		unsigned char in[256];
		size_t len = echo_input(idx, it->seed, in), got = 0;
		const void *data = NULL;

		CHECK(status == ECHO_RET && st == CTP_TASK_DONE && sig == 0,
		      "echo %u: status %d state %d signal %d", idx, status,
		      st, sig);
		CHECK(ctp_task_output(it->t, &data, &got) == 0 && got == len &&
		      memcmp(data, in, len) == 0, "echo %u: output", idx);
		y->completed++;
		break;
	}
	case K_QCANCEL:
	case K_PARENT:
	case K_LATE:
		CHECK(status == -ECANCELED && sig == 0,
		      "kind %d task %u: status %d signal %d", it->kind, idx,
		      status, sig);
		CHECK(it->cancel != 0 || st == CTP_TASK_CANCELLED,
		      "task %u: cancelled queued but state %d", idx, st);
		CHECK(it->cancel == UNSET || it->cancel == 0 ||
		      it->cancel == -EINPROGRESS, "task %u: cancel %d", idx,
		      it->cancel);
		if (st == CTP_TASK_CANCELLED)
			y->cancelled++;
		else
			y->completed++;
		break;
	case K_RCANCEL:
		CHECK(it->cancel == -EINPROGRESS && status == -ECANCELED &&
		      st == CTP_TASK_DONE && sig == 0,
		      "rcancel %u: cancel %d status %d state %d signal %d",
		      idx, it->cancel, status, st, sig);
		y->completed++;
		break;
	case K_KILL:
		CHECK(it->cancel == -EINPROGRESS && status == -ECANCELED &&
		      st == CTP_TASK_DONE && sig == SIGKILL,
		      "kill %u: cancel %d status %d state %d signal %d", idx,
		      it->cancel, status, st, sig);
		y->killed++;
		break;
	case K_DEADLINE:
		CHECK(status == -ETIMEDOUT &&
		      ((st == CTP_TASK_CANCELLED && sig == 0) ||
		       (st == CTP_TASK_DONE && sig == SIGKILL)),
		      "deadline %u: status %d state %d signal %d", idx,
		      status, st, sig);
		if (st == CTP_TASK_CANCELLED)
			y->timed_out++;
		else
			y->killed++;
		break;
	case K_CRASH:
		CHECK(status == -EOWNERDEAD && st == CTP_TASK_DONE &&
		      sig == SIGSEGV, "crash %u: status %d state %d signal %d",
		      idx, status, st, sig);
		y->crashed++;
		break;
	}
}

static void check_stats(ctp_pool *pool, uint64_t n, const struct tally *y,
                        unsigned processes)
{
	ctp_stats s;
	int64_t limit;

	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_pool_stats(pool, &s);
	CHECK(s.submitted == s.completed + s.cancelled + s.timed_out +
	      s.dropped + s.killed + s.crashed, "identity");
	CHECK(s.submitted == n && s.completed == y->completed &&
	      s.cancelled == y->cancelled && s.timed_out == y->timed_out &&
	      s.dropped == 0 && s.killed == y->killed &&
	      s.crashed == y->crashed,
	      "stats %lu: completed %lu/%lu cancelled %lu/%lu timed_out "
	      "%lu/%lu killed %lu/%lu crashed %lu/%lu (stats/seen)",
	      (unsigned long)s.submitted, (unsigned long)s.completed,
	      (unsigned long)y->completed, (unsigned long)s.cancelled,
	      (unsigned long)y->cancelled, (unsigned long)s.timed_out,
	      (unsigned long)y->timed_out, (unsigned long)s.killed,
	      (unsigned long)y->killed, (unsigned long)s.crashed,
	      (unsigned long)y->crashed);
	CHECK(s.queued == 0 && s.running == 0, "queued %lu running %lu",
	      (unsigned long)s.queued, (unsigned long)s.running);
	/* replacements are made asynchronously: a bounded poll */
	limit = tu_now_ns() + BOUND;
	while (s.processes != processes && tu_now_ns() < limit) {
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
		ctp_pool_stats(pool, &s);
	}
	CHECK(s.processes == processes, "processes %u, want %u", s.processes,
	      processes);
}

/* ---- processes and descriptors of this test program --------------------- */

struct pinfo {
	pid_t              pid, ppid;
	char               state;
	unsigned long long start;
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
	return sscanf(rp + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
	              "%*u %*u %*d %*d %*d %*d %*d %*d %llu", &pi->state,
	              &pi->ppid, &pi->start) == 3;
}

/* Processes of ours (our children and theirs) now, zombies included. */
static int descendants(char *why, size_t len)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t self = getpid(), kids[256];
	int nkids = 0, n = 0, used = 0;

	assert_non_null(d);
	why[0] = '\0';
	/* two passes: our children, then theirs */
	for (int pass = 0; pass < 2; pass++) {
		rewinddir(d);
		while ((e = readdir(d)) != NULL) {
			struct pinfo pi;
			char *end;
			long pid = strtol(e->d_name, &end, 10);
			bool mine = false;

			if (*end != '\0' || pid <= 0 ||
			    !pinfo_read((pid_t)pid, &pi))
				continue;
			if (pass == 0) {
				mine = pi.ppid == self;
				if (mine && nkids < 256)
					kids[nkids++] = pi.pid;
			} else {
				for (int i = 0; i < nkids; i++)
					mine |= pi.ppid == kids[i];
			}
			if (!mine)
				continue;
			n++;
			if (used + 32 < (int)len)
				used += snprintf(why + used, len - (size_t)used,
				    "%d(ppid %d, %c) ", (int)pi.pid,
				    (int)pi.ppid, pi.state);
		}
	}
	closedir(d);
	return n;
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

static void check_fds(int fds0, const char *list0)
{
	char list[1024];
	int n = list_fds(list, sizeof(list));

	CHECK(n == fds0, "fds %d, were %d:\n  now: %s\n  were: %s", n, fds0,
	      list, list0);
}

static void destroy_leaves_nothing(ctp_pool *pool, int fds0,
                                   const char *list0)
{
	char why[512];
	int left;

	assert_int_equal(ctp_pool_destroy(pool), 0);
	left = descendants(why, sizeof(why));
	CHECK(left == 0, "%d processes left: %s", left, why);
	check_fds(fds0, list0);
}

/* ---- mixed outcomes ----------------------------------------------------- */

static enum kind pick_kind(uint32_t *rng)
{
	unsigned r = tu_rng_next(rng) % 100;

	if (r < 50)
		return K_ECHO;
	if (r < 70)
		return K_QCANCEL;
	if (r < 85)
		return K_RCANCEL;
	if (r < 87)
		return K_KILL;
	if (r < 90)
		return K_DEADLINE;
	return K_CRASH;
}

/* Cancels the task that said idx started (a K_RCANCEL or K_KILL). */
static void cancel_started(struct item *items, size_t n, uint32_t idx,
                           size_t *heard)
{
	CHECK(idx < n, "index %u from a worker", idx);
	if (idx >= n)
		return;
	CHECK(items[idx].cancel == UNSET, "task %u said it started twice",
	      idx);
	items[idx].cancel_ns = tu_now_ns();
	items[idx].cancel = ctp_task_cancel(items[idx].t);
	(*heard)++;
}

static void test_isolated_stress_mixed(void **state)
{
	size_t n = scaled(10000, 200), waiting = 0, heard = 0;
	struct item *items = calloc(n, sizeof(*items));
	uint32_t rng = 0x1505a7ed, idx;
	struct tally y = { 0 };
	int64_t slowest = 0;
	ctp_pool *pool;
	char list0[1024];
	int fds0;

	(void)state;
	assert_non_null(items);
	failures = 0;
	say_open();
	fds0 = list_fds(list0, sizeof(list0));
	pool = NULL;
	assert_int_equal(ctp_pool_create(&pool, &(ctp_pool_opts){
	    .threads = 4, .processes = 4, .kill_after = KILL_AFTER,
	    .queue_capacity = n }), 0);
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];

		it->kind = pick_kind(&rng);
		it->seed = tu_rng_next(&rng);
		assert_int_equal(submit_item(pool, it, (uint32_t)i, NULL), 0);
		if (it->kind == K_QCANCEL)
			it->cancel = ctp_task_cancel(it->t);
		waiting += it->kind == K_RCANCEL || it->kind == K_KILL;
		/* cancel whatever said it started meanwhile */
		while (hear_index(&idx, 0))
			cancel_started(items, n, idx, &heard);
	}
	while (heard < waiting && hear_index(&idx, BOUND))
		cancel_started(items, n, idx, &heard);
	CHECK(heard == waiting, "%zu of %zu started", heard, waiting);
	for (size_t i = 0; i < n; i++) {
		int64_t stop;

		check_item(&items[i], (uint32_t)i, &y); /* waits for it */
		stop = atomic_load(&items[i].done_ns) - items[i].cancel_ns;
		if (items[i].kind == K_RCANCEL && stop > slowest)
			slowest = stop;
	}
	check_stats(pool, n, &y, 4);
	print_message("mixed: %zu tasks: %lu completed, %lu cancelled, "
	              "%lu timed out, %lu killed, %lu crashed; slowest "
	              "cooperative stop %.1f ms\n", n,
	              (unsigned long)y.completed, (unsigned long)y.cancelled,
	              (unsigned long)y.timed_out, (unsigned long)y.killed,
	              (unsigned long)y.crashed, (double)slowest / 1e6);
	destroy_leaves_nothing(pool, fds0, list0);
	for (size_t i = 0; i < n; i++)
		ctp_task_release(items[i].t);
	free(items);
	say_close();
	assert_int_equal(failures, 0);
}

/* ---- several threads submitting and cancelling -------------------------- */

#define SUBMITTERS 4

struct submitter {
	ctp_pool    *pool;
	struct item *items;
	size_t       n;
	uint32_t     rng;
	int          errors; /* submits or token calls that failed */
};

/* A submitter's group: a parent token for its next GROUP items, fired
 * (catching its tasks queued or running) when the next group starts. */
#define GROUP 16

static void *submitter_main(void *arg)
{
	struct submitter *s = arg;
	ctp_token *parent = NULL;
	size_t late = SIZE_MAX;

	for (size_t i = 0; i < s->n; i++) {
		struct item *it = &s->items[i];
		unsigned r = tu_rng_next(&s->rng) % 100;

		if (i % GROUP == 0) {
			if (parent != NULL && ctp_token_cancel(parent) != 0)
				s->errors++;
			ctp_token_release(parent);
			if (ctp_token_create(&parent, NULL) != 0) {
				s->errors++;
				return NULL;
			}
		}

		it->kind = r < 40 ? K_ECHO : r < 60 ? K_QCANCEL :
		    r < 80 ? K_LATE : r < 92 ? K_PARENT : K_CRASH;
		it->seed = tu_rng_next(&s->rng);
		if (submit_item(s->pool, it, (uint32_t)i, parent) != 0) {
			s->errors++;
			it->t = NULL;
			continue;
		}
		if (it->kind == K_QCANCEL)
			it->cancel = ctp_task_cancel(it->t);
		/* a late cancel: the previous K_LATE, after a little while */
		if (it->kind == K_LATE) {
			if (late != SIZE_MAX) {
				tu_delay_loop(tu_rng_next(&s->rng) % 20000);
				s->items[late].cancel =
				    ctp_task_cancel(s->items[late].t);
			}
			late = i;
		}
	}
	if (late != SIZE_MAX)
		s->items[late].cancel = ctp_task_cancel(s->items[late].t);
	if (ctp_token_cancel(parent) != 0)
		s->errors++;
	ctp_token_release(parent);
	return NULL;
}

static void test_isolated_stress_concurrent_cancel(void **state)
{
	size_t per = scaled(2000, 50);
	struct submitter sub[SUBMITTERS];
	pthread_t th[SUBMITTERS];
	struct tally y = { 0 };
	ctp_pool *pool = NULL;
	char list0[1024];
	int fds0;

	(void)state;
	failures = 0;
	fds0 = list_fds(list0, sizeof(list0));
	assert_int_equal(ctp_pool_create(&pool, &(ctp_pool_opts){
	    .threads = 4, .processes = 3, .kill_after = CTP_SEC(5),
	    .queue_capacity = per * SUBMITTERS }), 0);
	for (int k = 0; k < SUBMITTERS; k++) {
		sub[k] = (struct submitter){ pool,
		    calloc(per, sizeof(struct item)), per, 0x9e3779b9u + k, 0 };
		assert_non_null(sub[k].items);
	}
	for (int k = 0; k < SUBMITTERS; k++)
		th[k] = tu_spawn(submitter_main, &sub[k]);
	for (int k = 0; k < SUBMITTERS; k++)
		tu_join(th[k]);
	for (int k = 0; k < SUBMITTERS; k++) {
		CHECK(sub[k].errors == 0, "submitter %d: %d errors", k,
		      sub[k].errors);
		for (size_t i = 0; i < per; i++)
			if (sub[k].items[i].t != NULL)
				check_item(&sub[k].items[i], (uint32_t)i, &y);
	}
	check_stats(pool, per * SUBMITTERS, &y, 3);
	destroy_leaves_nothing(pool, fds0, list0);
	for (int k = 0; k < SUBMITTERS; k++) {
		for (size_t i = 0; i < per; i++)
			ctp_task_release(sub[k].items[i].t);
		free(sub[k].items);
	}
	assert_int_equal(failures, 0);
}

/* ---- pools come and go -------------------------------------------------- */

static void test_isolated_stress_create_destroy(void **state)
{
	unsigned long cycles = scaled(200, 10);
	uint32_t rng = 0xc0ffee;
	char list0[1024];
	int fds0;

	(void)state;
	failures = 0;
	fds0 = list_fds(list0, sizeof(list0));
	for (unsigned long c = 0; c < cycles; c++) {
		unsigned procs = 1 + tu_rng_next(&rng) % 3;
		ctp_pool *pool = NULL;
		struct item it[3];
		int status = UNSET;

		assert_int_equal(ctp_pool_create(&pool, &(ctp_pool_opts){
		    .threads = 1 + tu_rng_next(&rng) % 3, .processes = procs,
		    .kill_after = CTP_MSEC(10) }), 0);
		memset(it, 0, sizeof(it));
		it[0].kind = K_ECHO;
		it[0].seed = tu_rng_next(&rng);
		assert_int_equal(submit_item(pool, &it[0], 0, NULL), 0);
		/* sometimes a task stuck in a loop, sometimes one queued */
		it[1].kind = c % 3 == 0 ? K_DEADLINE : K_ECHO;
		it[1].seed = 1010; /* a 15 ms deadline when stuck */
		assert_int_equal(submit_item(pool, &it[1], 1, NULL), 0);
		it[2].kind = K_ECHO;
		assert_int_equal(submit_item(pool, &it[2], 2, NULL), 0);
		CHECK(ctp_task_wait(it[0].t, BOUND, &status) == 0 &&
		      status == ECHO_RET, "cycle %lu: %d", c, status);
		if (c % 2 == 0)
			assert_int_equal(ctp_pool_shutdown(pool, 0, BOUND), 0);
		assert_int_equal(ctp_pool_destroy(pool), 0);
		for (int i = 0; i < 3; i++) {
			CHECK(ctp_task_wait(it[i].t, 0, &status) == 0 &&
			      atomic_load(&it[i].calls) == 1,
			      "cycle %lu task %d", c, i);
			ctp_task_release(it[i].t);
		}
	}
	{
		char why[512];
		int left = descendants(why, sizeof(why));

		CHECK(left == 0, "%d processes left: %s", left, why);
		check_fds(fds0, list0);
	}
	assert_int_equal(failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_isolated_stress_mixed),
		cmocka_unit_test(test_isolated_stress_concurrent_cancel),
		cmocka_unit_test(test_isolated_stress_create_destroy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
