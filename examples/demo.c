/*
 * demo: a tour of ctpool in one short story.
 *
 * A pool of 2 workers runs "jobs" that each pretend to work by sleeping on
 * their cancellation token (ctp_token_sleep) and stop at once when it fires.
 * The story: one job runs to completion; two long jobs take both workers;
 * while they hold them, one queued job is cancelled by its handle, another
 * misses its deadline, and a group of jobs is cancelled through a parent
 * token; then a running job is cancelled by its handle; then jobs are
 * scheduled: one delayed by 250 ms, one periodic (every 100 ms, cancelled
 * by its handle between two runs), one delayed by an hour and cancelled
 * before it starts, and a high-priority job that overtakes a normal one
 * queued before it; then a job stuck in an endless loop that no token can
 * reach (`for (;;);`) runs as an isolated task in a worker process of a
 * second pool and is killed on its deadline, and that pool goes on at full
 * strength; finally the first pool is shut down with a 200 ms drain while
 * more work is pending. It ends with what happened to every job and the
 * pool's statistics.
 *
 * The pool with worker processes is created first, while main is the only
 * thread: its fork server is a copy of the program taken at that moment,
 * and a copy taken while other threads run would keep whatever locks they
 * held (ctpool.h, ctp_pool_create).
 *
 * Only this (main) thread prints, each time after it has waited for the
 * event it reports, so the story reads the same on every run (only the
 * timings change). Exit status: 0 when every job ended as the story expects.
 *
 * Build: meson setup build && ninja -C build && ./build/examples/demo
 */
#include <ctype.h>
#include <errno.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctpool.h"

#define MAX_RUNS 16 /* start times a job keeps (a periodic job runs often) */

struct job {
	const char *name;
	int         work_ms;      /* how long the job works (sleeps) */
	int         expect_ran;   /* what the story expects: did fn run ... */
	int         expect_status; /* ... and the status done receives */
	sem_t       started;      /* posted by the job when it starts */
	int         ran;          /* written by the job ... */
	int64_t     stop_ns;      /* ... when it stopped working */
	int         runs;         /* ... how many times it started ... */
	int64_t     run_ns[MAX_RUNS]; /* ... and when (the first MAX_RUNS) */
	int64_t     submit_ns;    /* when we submitted it */
	int         status;       /* written by done */
	int         done_calls;
	ctp_task   *task;         /* our handle */
};

#define JOB(n, ms, ran, st) \
	{ .name = (n), .work_ms = (ms), .expect_ran = (ran), .expect_status = (st) }

static struct job jobs[] = {
	/*   name          work ms  ran  status        what the story does */
	JOB("warm-cache",  20,      1,   0),           /* runs to the end */
	JOB("newsletter",  10000,   1,   -ECANCELED),  /* cancelled, running */
	JOB("batch-1",     10000,   1,   -ECANCELED),  /* group, running */
	JOB("email",       10,      0,   -ECANCELED),  /* cancelled, queued */
	JOB("thumbnail",   10,      0,   -ETIMEDOUT),  /* deadline, queued */
	JOB("batch-2",     10,      0,   -ECANCELED),  /* group, queued */
	JOB("batch-3",     10,      0,   -ECANCELED),  /* group, queued */
	JOB("reminder",    20,      1,   0),           /* delayed 250 ms */
	JOB("metrics",     5,       1,   -ECANCELED),  /* every 100 ms, until
	                                                  cancelled */
	JOB("audit",       10,      0,   -ECANCELED),  /* delayed 1 h, cancelled */
	JOB("import-1",    100,     1,   0),           /* hold both workers */
	JOB("import-2",    200,     1,   0),
	JOB("bulk-export", 20,      1,   0),           /* normal priority */
	JOB("alert",       20,      1,   0),           /* high: starts first */
	JOB("report-1",    120,     1,   0),           /* done in the drain */
	JOB("report-2",    120,     1,   0),
	JOB("report-3",    120,     1,   -ESHUTDOWN),  /* running at its end */
	JOB("report-4",    120,     1,   -ESHUTDOWN),
	JOB("report-5",    120,     0,   -ESHUTDOWN),  /* queued: dropped */
	JOB("report-6",    120,     0,   -ESHUTDOWN),
};
enum { WARM, NEWS, BATCH1, EMAIL, THUMB, BATCH2, BATCH3, REMIND, METRICS,
       AUDIT, IMPORT1, IMPORT2, BULK, ALERT, REPORT1,
       NJOBS = sizeof(jobs) / sizeof(jobs[0]) };

static int unexpected; /* count of surprises; makes the exit status 1 */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const char *code_name(int code)
{
	switch (code) {
	case 0:            return "0";
	case -ECANCELED:   return "-ECANCELED";
	case -ETIMEDOUT:   return "-ETIMEDOUT";
	case -ESHUTDOWN:   return "-ESHUTDOWN";
	case -EINPROGRESS: return "-EINPROGRESS";
	case -EALREADY:    return "-EALREADY";
	default:           return "(other)";
	}
}

/* Stops the demo on an error the story does not expect. */
static void check(const char *what, int rc, int want)
{
	if (rc == want)
		return;
	printf("error: %s returned %d (%s), expected %s\n", what, rc,
	       ctp_strerror(rc), code_name(want));
	exit(1);
}

/* The job: works for work_ms unless its token fires first. Its status is 0
 * when the work was done, else the reason the token fired. A periodic job
 * comes here once per run (runs never overlap, so only one run at a time
 * writes the job). */
static int job_fn(void *arg, ctp_token *token)
{
	struct job *j = arg;
	int         rc;

	if (j->runs < MAX_RUNS)
		j->run_ns[j->runs] = now_ns();
	j->runs++;
	j->ran = 1;
	if (sem_post(&j->started) != 0)
		abort(); /* cannot fail on a valid semaphore */
	rc = ctp_token_sleep(token, CTP_MSEC(j->work_ms));
	j->stop_ns = now_ns();
	return rc;
}

/* Runs on a worker (job ran), or on the thread that cancelled it. */
static void job_done(void *arg, int status)
{
	struct job *j = arg;

	j->status = status;
	j->done_calls++;
}

static void submit(struct job *j, int64_t timeout, ctp_token *parent,
                   ctp_pool *pool)
{
	ctp_task_opts o = { .done = job_done, .timeout = timeout,
	                    .parent = parent, .queue_wait = CTP_FOREVER };

	j->submit_ns = now_ns();
	check("ctp_pool_submit", ctp_pool_submit(pool, job_fn, j, &o, &j->task),
	      0);
}

/* Waits (at most 10 s, so a broken run fails instead of hanging) until the
 * job is running on a worker. */
static void wait_started(struct job *j)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	while (sem_timedwait(&j->started, &ts) != 0) {
		if (errno != EINTR) {
			printf("error: job %s did not start\n", j->name);
			exit(1);
		}
	}
}

static void wait_done(struct job *j)
{
	check("ctp_task_wait", ctp_task_wait(j->task, CTP_SEC(10), NULL), 0);
}

static void expect_state(struct job *j, int want, const char *what)
{
	if (ctp_task_state(j->task) != want) {
		printf("   UNEXPECTED: %s is not %s\n", j->name, what);
		unexpected++;
	}
}

static void step_complete(ctp_pool *pool)
{
	printf("1. A job that runs to completion\n");
	submit(&jobs[WARM], 0, NULL, pool);
	wait_done(&jobs[WARM]);
	printf("   warm-cache worked %d ms and finished: status %s\n\n",
	       jobs[WARM].work_ms, code_name(jobs[WARM].status));
}

static void step_occupy(ctp_pool *pool, ctp_token *batch)
{
	printf("2. Two long jobs (10 s each) take both workers\n");
	submit(&jobs[NEWS], 0, NULL, pool);
	wait_started(&jobs[NEWS]);
	printf("   newsletter is running\n");
	submit(&jobs[BATCH1], 0, batch, pool);
	wait_started(&jobs[BATCH1]);
	printf("   batch-1 is running (it belongs to the group \"batch\")\n\n");
}

static void step_cancel_queued(ctp_pool *pool)
{
	struct job *j = &jobs[EMAIL];

	printf("3. Cancel a job by its handle while it is still queued\n");
	submit(j, 0, NULL, pool);
	expect_state(j, CTP_TASK_QUEUED, "queued");
	printf("   email is queued behind the busy workers\n");
	check("ctp_task_cancel(email)", ctp_task_cancel(j->task), 0);
	/* Its done has already returned, on this thread. */
	printf("   ctp_task_cancel(email) = 0: it will never run; "
	       "its done got %s\n\n", code_name(j->status));
}

static void step_deadline(ctp_pool *pool)
{
	struct job *j = &jobs[THUMB];

	printf("4. A queued job misses its deadline\n");
	submit(j, CTP_MSEC(50), NULL, pool);
	printf("   thumbnail is queued with opts.timeout = 50 ms\n");
	wait_done(j);
	printf("   the deadline passed before a worker was free: it never "
	       "ran; its done got %s\n\n", code_name(j->status));
}

static void step_cancel_group(ctp_pool *pool, ctp_token *batch)
{
	int64_t t0;

	printf("5. Cancel a group through its parent token\n");
	submit(&jobs[BATCH2], 0, batch, pool);
	submit(&jobs[BATCH3], 0, batch, pool);
	printf("   batch-2 and batch-3 are queued in the group \"batch\"\n");
	t0 = now_ns();
	check("ctp_token_cancel(batch)", ctp_token_cancel(batch), 0);
	printf("   ctp_token_cancel(batch) = 0\n");
	printf("   batch-2, batch-3 never ran; their done got %s, %s\n",
	       code_name(jobs[BATCH2].status), code_name(jobs[BATCH3].status));
	wait_done(&jobs[BATCH1]);
	printf("   batch-1 was running: its token fired and it stopped "
	       "%lld us later, status %s\n\n",
	       (long long)(jobs[BATCH1].stop_ns - t0) / 1000,
	       code_name(jobs[BATCH1].status));
}

static void step_cancel_running(void)
{
	struct job *j = &jobs[NEWS];
	int64_t     t0 = now_ns();

	printf("6. Cancel a job by its handle while it is running\n");
	check("ctp_task_cancel(newsletter)", ctp_task_cancel(j->task),
	      -EINPROGRESS);
	wait_done(j);
	printf("   ctp_task_cancel(newsletter) = -EINPROGRESS: its token fired "
	       "and it stopped %lld us later, status %s\n\n",
	       (long long)(j->stop_ns - t0) / 1000, code_name(j->status));
}

/* ---- scheduling: delays, periods, priorities ------------------------------ */

static void surprise(const char *what)
{
	printf("   UNEXPECTED: %s\n", what);
	unexpected++;
}

#define REMIND_DELAY_MS 250 /* reminder: opts.delay */
#define METRICS_MS      100 /* metrics: opts.period */
#define METRICS_RUNS    4   /* runs of metrics the story watches */

static void submit_sched(struct job *j, int64_t delay, int64_t period,
                         int priority, ctp_pool *pool)
{
	ctp_task_opts o = { .done = job_done, .queue_wait = CTP_FOREVER,
	                    .delay = delay, .period = period,
	                    .priority = priority };

	j->submit_ns = now_ns();
	check("ctp_pool_submit", ctp_pool_submit(pool, job_fn, j, &o, &j->task),
	      0);
}

/* ms from the job's submission to its run k's start */
static long long run_ms(const struct job *j, int k)
{
	return (long long)(j->run_ns[k] - j->submit_ns) / 1000000;
}

static void step_schedule(ctp_pool *pool)
{
	struct job *rem = &jobs[REMIND], *met = &jobs[METRICS];
	struct job *aud = &jobs[AUDIT], *bulk = &jobs[BULK];
	struct job *alert = &jobs[ALERT];

	printf("7. Later, again and again, and urgently: delays, periods, "
	       "priorities\n");
	submit_sched(rem, CTP_MSEC(REMIND_DELAY_MS), 0, CTP_PRIORITY_NORMAL,
	             pool);
	submit_sched(met, 0, CTP_MSEC(METRICS_MS), CTP_PRIORITY_NORMAL, pool);
	submit_sched(aud, CTP_SEC(3600), 0, CTP_PRIORITY_NORMAL, pool);
	printf("   reminder is queued with opts.delay = %d ms, metrics with "
	       "opts.period = %d ms,\n   audit with opts.delay = 1 hour\n",
	       REMIND_DELAY_MS, METRICS_MS);
	check("ctp_task_cancel(audit)", ctp_task_cancel(aud->task), 0);
	printf("   ctp_task_cancel(audit) = 0 long before its hour: it will "
	       "never run; its done got %s\n", code_name(aud->status));

	/* metrics runs at +0, +100, +200, +300 ms; the reminder at +250 */
	for (int k = 0; k < METRICS_RUNS; k++) {
		if (k == 3) {
			wait_done(rem);
			printf("   reminder started %lld ms after submission "
			       "(opts.delay %d ms) and finished: status %s\n",
			       run_ms(rem, 0), REMIND_DELAY_MS,
			       code_name(rem->status));
			if (rem->run_ns[0] - rem->submit_ns <
			    CTP_MSEC(REMIND_DELAY_MS))
				surprise("the reminder started before its delay");
		}
		wait_started(met);
		printf("   metrics run %d started at +%lld ms\n", k + 1,
		       run_ms(met, k));
	}

	/* Both workers busy: metrics cannot start again, so it is between
	 * two runs (queued) for sure when it is cancelled. */
	submit(&jobs[IMPORT1], 0, NULL, pool);
	submit(&jobs[IMPORT2], 0, NULL, pool);
	wait_started(&jobs[IMPORT1]);
	wait_started(&jobs[IMPORT2]);
	printf("   import-1 (100 ms) and import-2 (200 ms) take both workers\n");
	expect_state(met, CTP_TASK_QUEUED, "queued between two runs");
	check("ctp_task_cancel(metrics)", ctp_task_cancel(met->task), 0);
	wait_done(met);
	printf("   ctp_task_cancel(metrics) = 0 between two runs: after %d "
	       "runs it will not run again;\n   its done was called once, "
	       "at the end of the series, with %s\n", met->runs,
	       code_name(met->status));
	if (met->runs < METRICS_RUNS)
		surprise("metrics ran fewer times than the story saw");

	/* bulk-export is queued first, alert second but with a higher
	 * priority: the worker import-1 frees takes alert first. */
	submit_sched(bulk, 0, 0, CTP_PRIORITY_NORMAL, pool);
	submit_sched(alert, 0, 0, CTP_PRIORITY_HIGH, pool);
	printf("   queued behind them: bulk-export (normal priority), then "
	       "alert (CTP_PRIORITY_HIGH)\n");
	wait_done(alert);
	wait_done(bulk);
	printf("   the first free worker took alert first: it started %lld ms "
	       "after it was queued,\n   bulk-export %lld ms after "
	       "(statuses %s, %s)\n", run_ms(alert, 0), run_ms(bulk, 0),
	       code_name(alert->status), code_name(bulk->status));
	if (alert->run_ns[0] >= bulk->run_ns[0])
		surprise("alert did not start before bulk-export");
	wait_done(&jobs[IMPORT1]);
	wait_done(&jobs[IMPORT2]);
	printf("\n");
}

/* ---- isolated tasks (the pool with worker processes) --------------------- */

#define ISO_PROCESSES  2   /* its worker processes */
#define ISO_TIMEOUT_MS 200 /* the endless job's deadline */
#define ISO_KILL_MS    100 /* its kill_after */

/* Runs in a worker process and never returns: it never looks at its token,
 * so only a SIGKILL to its process stops it. (A loop whose condition is a
 * constant may run forever in C11: 6.8.5p6.) */
static int spin_fn(const void *in, size_t in_len, ctp_output *out,
                   ctp_token *token)
{
	(void)in;
	(void)in_len;
	(void)out;
	(void)token;
	for (;;)
		;
	return 0; /* never reached; gcc 12 warns without it */
}

/* Runs in a worker process: its output is the input upper-cased, and the
 * pid of the process it ran in. */
static int shout_fn(const void *in, size_t in_len, ctp_output *out,
                    ctp_token *token)
{
	const unsigned char *p = in;
	char buf[96];
	int  n;

	(void)token;
	if (in_len > 64)
		return -EMSGSIZE;
	for (size_t i = 0; i < in_len; i++)
		buf[i] = (char)toupper(p[i]);
	n = snprintf(buf + in_len, sizeof(buf) - in_len, " (pid %d)",
	             (int)getpid());
	return ctp_output_write(out, buf, in_len + (size_t)n);
}

/* Polls (every 1 ms, up to 5 s) until the pool has `want` worker processes
 * again: a killed one is replaced by the library, not by us. Returns how
 * long it waited, in us, and leaves the last snapshot in *s. */
static int64_t wait_processes(ctp_pool *ipool, unsigned want, ctp_stats *s)
{
	struct timespec ms = { 0, 1000000 };
	int64_t t0 = now_ns();

	for (;;) {
		ctp_pool_stats(ipool, s);
		if (s->processes == want || now_ns() - t0 > CTP_SEC(5))
			return (now_ns() - t0) / 1000;
		nanosleep(&ms, NULL);
	}
}

static void spin_until_killed(ctp_pool *ipool)
{
	ctp_task_opts o = { .timeout = CTP_MSEC(ISO_TIMEOUT_MS) };
	ctp_task     *task;
	int64_t       t0, ms;
	int           status, sig;

	t0 = now_ns();
	check("ctp_pool_submit_isolated(spin)",
	      ctp_pool_submit_isolated(ipool, spin_fn, NULL, 0, NULL, &o,
	                               &task), 0);
	printf("   spin runs `for (;;);` in a worker process, opts.timeout = "
	       "%d ms, kill_after = %d ms\n", ISO_TIMEOUT_MS, ISO_KILL_MS);
	check("ctp_task_wait(spin)", ctp_task_wait(task, CTP_SEC(10), &status),
	      0);
	ms = (now_ns() - t0) / 1000000;
	sig = ctp_task_exit_signal(task);
	printf("   its process was killed: the job ended %lld ms after "
	       "submission (deadline %d ms + kill_after %d ms)\n",
	       (long long)ms, ISO_TIMEOUT_MS, ISO_KILL_MS);
	printf("   status %d (%s), exit signal %d (%s), state %s\n", status,
	       ctp_strerror(status), sig, sig == SIGKILL ? "SIGKILL"
	       : strsignal(sig), ctp_task_state(task) == CTP_TASK_DONE
	       ? "done (it ran)" : "not done");
	if (status != -ETIMEDOUT || sig != SIGKILL ||
	    ctp_task_state(task) != CTP_TASK_DONE)
		surprise("spin should end -ETIMEDOUT, SIGKILL, done");
	if (ms < ISO_TIMEOUT_MS + ISO_KILL_MS)
		surprise("spin ended before its deadline + kill_after");
	ctp_task_release(task);
}

static void shout_after(ctp_pool *ipool)
{
	static const char in[] = "the pool is at full strength";
	char        want[sizeof(in)];
	const void *data;
	size_t      len;
	ctp_task   *task;
	int         status;

	check("ctp_pool_submit_isolated(shout)",
	      ctp_pool_submit_isolated(ipool, shout_fn, in, strlen(in), NULL,
	                               NULL, &task), 0);
	check("ctp_task_wait(shout)", ctp_task_wait(task, CTP_SEC(10), &status),
	      0);
	check("ctp_task_output(shout)", ctp_task_output(task, &data, &len), 0);
	printf("   the next isolated job upper-cases \"%s\":\n"
	       "      status %d, output \"%.*s\" (the demo is pid %d)\n", in,
	       status, (int)len, data != NULL ? (const char *)data : "",
	       (int)getpid());
	for (size_t i = 0; i < sizeof(in); i++)
		want[i] = (char)toupper((unsigned char)in[i]);
	if (status != 0 || len < strlen(want) ||
	    memcmp(data, want, strlen(want)) != 0)
		surprise("the output is not the upper-cased input");
	ctp_task_release(task);
}

static void step_isolated(ctp_pool *ipool)
{
	ctp_stats s;
	int64_t   us;
	pid_t     left;

	printf("8. A job stuck in an endless loop, killed on its deadline "
	       "(an isolated task)\n");
	spin_until_killed(ipool);
	us = wait_processes(ipool, ISO_PROCESSES, &s);
	printf("   stats.processes = %u of %d (seen %lld us after the job "
	       "ended), stats.killed = %llu\n", s.processes, ISO_PROCESSES,
	       (long long)us, (unsigned long long)s.killed);
	if (s.processes != ISO_PROCESSES || s.killed != 1)
		surprise("the pool is not back to full strength");
	shout_after(ipool);
	ctp_pool_stats(ipool, &s);
	printf("   ctp_pool_stats: submitted %llu = completed %llu + killed "
	       "%llu\n", (unsigned long long)s.submitted,
	       (unsigned long long)s.completed, (unsigned long long)s.killed);
	if (s.submitted != 2 || s.completed != 1 || s.killed != 1)
		surprise("the story expects 2 = 1 + 1");
	check("ctp_pool_destroy(isolated pool)", ctp_pool_destroy(ipool), 0);
	/* The demo starts no process of its own: any child left now would
	 * be one of the pool's (alive, or a zombie that waitpid would reap). */
	left = waitpid(-1, NULL, WNOHANG);
	printf("   ctp_pool_destroy = 0; child processes left: %s\n\n",
	       left < 0 && errno == ECHILD ? "none (waitpid: ECHILD)"
	                                   : "SOME");
	if (!(left < 0 && errno == ECHILD))
		surprise("a child process outlived the pool");
}

static void step_shutdown(ctp_pool *pool)
{
	int64_t t0, t1;
	int     rc;

	printf("9. Shut down with a 200 ms drain while 6 reports of 120 ms "
	       "are pending\n");
	for (int i = REPORT1; i < NJOBS; i++)
		submit(&jobs[i], 0, NULL, pool);
	wait_started(&jobs[REPORT1]);
	wait_started(&jobs[REPORT1 + 1]);
	t0 = now_ns();
	rc = ctp_pool_shutdown(pool, CTP_MSEC(200), CTP_SEC(5));
	t1 = now_ns();
	check("ctp_pool_shutdown", rc, 0);
	printf("   ctp_pool_shutdown(drain 200 ms, grace 5 s) = 0: "
	       "the stop took %lld us\n\n", (long long)(t1 - t0) / 1000);
}

static const char *outcome(const struct job *j)
{
	static char buf[40]; /* only main calls it */

	if (j->runs > 1) {
		snprintf(buf, sizeof buf, "ran %d times, then cancelled",
		         j->runs);
		return buf;
	}
	if (j->ran)
		return j->status == 0 ? "ran to completion"
		                      : "ran, stopped when its token fired";
	switch (j->status) {
	case -ECANCELED: return "cancelled, never ran";
	case -ETIMEDOUT: return "timed out, never ran";
	case -ESHUTDOWN: return "dropped by shutdown, never ran";
	default:         return "never ran (?)";
	}
}

static void report(void)
{
	printf("What happened to every job:\n");
	for (int i = 0; i < NJOBS; i++) {
		struct job *j = &jobs[i];
		int         state = ctp_task_state(j->task);
		int         ok = j->done_calls == 1 && j->ran == j->expect_ran &&
		                 j->status == j->expect_status &&
		                 state == (j->ran ? CTP_TASK_DONE
		                                  : CTP_TASK_CANCELLED);

		printf("   %-11s %-34s status %s%s\n", j->name, outcome(j),
		       code_name(j->status), ok ? "" : "  UNEXPECTED");
		unexpected += !ok;
	}
}

static void print_stats(ctp_pool *pool)
{
	ctp_stats s;

	ctp_pool_stats(pool, &s);
	printf("\nctp_pool_stats: submitted %llu = completed %llu + cancelled "
	       "%llu + timed_out %llu + dropped %llu; rejected %llu, threads "
	       "%u\n", (unsigned long long)s.submitted,
	       (unsigned long long)s.completed, (unsigned long long)s.cancelled,
	       (unsigned long long)s.timed_out, (unsigned long long)s.dropped,
	       (unsigned long long)s.rejected, s.threads);
	if (s.submitted != NJOBS || s.completed != 13 || s.cancelled != 4 ||
	    s.timed_out != 1 || s.dropped != 2 || s.rejected != 0) {
		printf("UNEXPECTED: the story expects 20 = 13 + 4 + 1 + 2\n");
		unexpected++;
	}
}

int main(void)
{
	ctp_pool_opts iopts = { .threads = 2, .name = "demo-iso",
	                        .processes = ISO_PROCESSES,
	                        .kill_after = CTP_MSEC(ISO_KILL_MS) };
	ctp_pool_opts opts = { .threads = 2, .name = "demo" };
	ctp_pool     *pool, *ipool;
	ctp_token    *batch;

	for (int i = 0; i < NJOBS; i++) {
		if (sem_init(&jobs[i].started, 0, 0) != 0) {
			printf("error: sem_init failed\n");
			return 1;
		}
	}
	/* First, while main is the only thread: its fork server copies the
	 * program as it is now (see the comment at the top). */
	check("ctp_pool_create(isolated pool)", ctp_pool_create(&ipool, &iopts),
	      0);
	check("ctp_pool_create", ctp_pool_create(&pool, &opts), 0);
	check("ctp_token_create", ctp_token_create(&batch, NULL), 0);
	printf("ctpool demo: a pool of 2 workers and %d jobs; and, created "
	       "first, a pool\nwith %d worker processes for isolated jobs\n\n",
	       NJOBS, ISO_PROCESSES);

	step_complete(pool);
	step_occupy(pool, batch);
	step_cancel_queued(pool);
	step_deadline(pool);
	step_cancel_group(pool, batch);
	ctp_token_release(batch);
	step_cancel_running();
	step_schedule(pool);
	step_isolated(ipool);
	step_shutdown(pool);
	report();
	print_stats(pool);

	for (int i = 0; i < NJOBS; i++) {
		ctp_task_release(jobs[i].task);
		sem_destroy(&jobs[i].started);
	}
	check("ctp_pool_destroy", ctp_pool_destroy(pool), 0);
	printf("%s\n", unexpected ? "\nSomething unexpected happened."
	                          : "\nEverything went as expected.");
	return unexpected ? 1 : 0;
}
