/*
 * node_main: the processes of the multi-process fault tests of
 * libctpool-redis (tests/redis/faults.sh). One program, several subcommands:
 *
 *   node_main node URL NS NAME [--threads N] [--claim-after MS] [--drain MS]
 *                              [--max-deliveries N]
 *       A node named NAME serving kinds "work" and "block" until SIGTERM or
 *       SIGINT; then it stops gracefully, prints "stopped" and exits 0.
 *         work  payload "jobno:sleepms": RPUSH <ns>:test:runs
 *               "<jobno> <NAME> <attempt> <realtime-ms> <pid>.<seq>"
 *               (runs started; the tag makes each line unique),
 *               sleeps sleepms on its token, writes output "ok" (or
 *               "cut <reason>"), RPUSH <ns>:test:ends "<jobno> <NAME>
 *               <attempt> <rc> <realtime-ms>", returns 0 or the token's
 *               reason.
 *         block as work, plus RPUSH <ns>:test:started <jobno> after the
 *               run is logged, and it sleeps until its token fires.
 *   node_main submit URL NS COUNT [--sleep MS] [--sleep-max MS] [--kind K]
 *                    [--first N] [--ids FILE] [--with-jobno]
 *                    [--retry-ms MS] [--pause-us US]
 *       Submits COUNT jobs numbered first.. (payload "jobno:sleepms", sleep
 *       drawn from [sleep, sleep-max]) and prints each id, one per line (or
 *       "id jobno" with --with-jobno), flushed as soon as the submit is
 *       acknowledged. With --retry-ms a failed submit is retried (under a
 *       new job number: a failed submit stored nothing) until that long has
 *       passed without success.
 *   node_main check URL NS IDSFILE [--timeout MS] [--state S] [--status N]
 *                   [--attempts N] [--node NAME] [--allow-rerun NAME]...
 *                   [--event-time MS --min-recovery MS --max-recovery MS]
 *       Waits for every id to end (bounded by --timeout in all), then
 *       checks every record (state, status, output, attempts, node) against
 *       the runs log and prints one line of counts. Exits 1 on any failure.
 *       Runs of job numbers absent from IDSFILE (a submit that answered an
 *       error yet stored its job) are counted as unacked_runs and listed
 *       on stderr, not failed.
 *   node_main cancel URL NS ID        prints ctp_cluster_cancel's answer
 *   node_main status URL NS ID        prints the record
 *   node_main wait URL NS ID MS       waits for an end, prints the record
 *
 * Exit status 2 for bad usage or a failed connection.
 */
#include <ctpool-redis.h>

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RERUN_NODES 8
#define LOG_RETRY_MS 30000 /* how long a log write retries (Redis away) */

/* ---- small helpers ------------------------------------------------------ */

static const char *g_url;  /* set once in main, read by every thread */
static const char *g_ns;
static const char *g_name;

static int64_t realtime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "node_main: %s: %d (%s)\n", what, rc, ctp_strerror(rc));
	exit(2);
}

static long arg_long(const char *s)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s) {
		fprintf(stderr, "node_main: not a number: %s\n", s);
		exit(2);
	}
	return v;
}

static const char *state_name(int state)
{
	switch (state) {
	case CTP_JOB_QUEUED: return "queued";
	case CTP_JOB_RUNNING: return "running";
	case CTP_JOB_DONE: return "done";
	case CTP_JOB_CANCELLED: return "cancelled";
	case CTP_JOB_DEAD: return "dead";
	default: return "?";
	}
}

static int state_of(const char *name)
{
	for (int s = CTP_JOB_QUEUED; s <= CTP_JOB_DEAD; s++)
		if (strcmp(state_name(s), name) == 0)
			return s;
	fprintf(stderr, "node_main: unknown state %s\n", name);
	exit(2);
}

static ctp_cluster *cluster_open(const char *node, int64_t claim_after,
                                 int64_t drain, unsigned max_deliveries)
{
	ctp_cluster_opts o = {
		.url = g_url, .ns = g_ns, .node = node,
		.claim_after = claim_after, .drain = drain,
		.max_deliveries = max_deliveries,
	};
	ctp_cluster *c;
	int rc = ctp_cluster_connect(&c, &o);
	if (rc != 0)
		die("ctp_cluster_connect", rc);
	return c;
}

/* ---- a plain hiredis connection for the test's own logs ------------------ */

static redisContext *raw_connect(void)
{
	struct timeval tv = { 5, 0 };
	redisContext *c = NULL;
	int db = 0;
	if (strncmp(g_url, "unix:", 5) == 0) {
		c = redisConnectUnixWithTimeout(g_url + 5, tv);
	} else {
		char host[256];
		int port = 6379;
		const char *p = g_url;
		if (strncmp(p, "redis://", 8) == 0)
			p += 8;
		size_t n = strcspn(p, ":/");
		if (n >= sizeof(host))
			return NULL;
		memcpy(host, p, n);
		host[n] = '\0';
		p += n;
		if (*p == ':')
			port = (int)strtol(p + 1, (char **)&p, 10);
		if (*p == '/')
			db = atoi(p + 1);
		c = redisConnectWithTimeout(host, port, tv);
	}
	if (c == NULL || c->err) {
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	if (db != 0) {
		redisReply *r = redisCommand(c, "SELECT %d", db);
		bool ok = r && r->type != REDIS_REPLY_ERROR;
		if (r)
			freeReplyObject(r);
		if (!ok) {
			redisFree(c);
			return NULL;
		}
	}
	return c;
}

/* Runs one command on *cp, reconnecting and retrying for up to
 * LOG_RETRY_MS while Redis is away (a restart). NULL if it never worked. */
static redisReply *raw_command(redisContext **cp, const char *fmt, ...)
{
	int64_t deadline = mono_ms() + LOG_RETRY_MS;
	for (;;) {
		if (*cp == NULL)
			*cp = raw_connect();
		if (*cp != NULL) {
			va_list ap;
			va_start(ap, fmt);
			redisReply *r = redisvCommand(*cp, fmt, ap);
			va_end(ap);
			if (r != NULL && r->type != REDIS_REPLY_ERROR)
				return r;
			if (r != NULL) /* e.g. LOADING while the AOF replays */
				freeReplyObject(r);
			redisFree(*cp);
			*cp = NULL;
		}
		if (mono_ms() > deadline)
			return NULL;
		sleep_ms(50);
	}
}

/* Each worker thread of a node logs on a connection of its own. */
static __thread redisContext *tl_conn;

/* ctp_pool_opts.on_thread_stop: a worker's log connection goes with it. */
static void worker_stop(unsigned index, void *user)
{
	(void)index;
	(void)user;
	if (tl_conn != NULL)
		redisFree(tl_conn);
	tl_conn = NULL;
}

static void log_push(const char *list, const char *line)
{
	redisReply *r = raw_command(&tl_conn, "RPUSH %s:test:%s %s", g_ns, list,
	                            line);
	if (r == NULL)
		fprintf(stderr, "node_main %s: could not log %s %s\n", g_name,
		        list, line);
	else
		freeReplyObject(r);
}

/* ---- node --------------------------------------------------------------- */

/* Shared body of "work" and "block": sleep_ns < 0 sleeps until the token
 * fires. */
static int run_job(const void *payload, size_t len, unsigned attempt,
                   ctp_output *out, ctp_token *token, bool block)
{
	char buf[64], line[160];
	long jobno = -1, sleepms = 0;
	if (len >= sizeof(buf))
		len = sizeof(buf) - 1;
	memcpy(buf, payload ? payload : "", len);
	buf[len] = '\0';
	sscanf(buf, "%ld:%ld", &jobno, &sleepms);

	/* The run's own tag (pid, sequence): a log write retried after its
	 * reply was lost (Redis killed) pushes the same line twice, and the
	 * check counts a line once; two runs never share a tag. */
	static atomic_ulong run_seq;
	snprintf(line, sizeof(line), "%ld %s %u %" PRId64 " %d.%lu", jobno,
	         g_name, attempt, realtime_ms(), (int)getpid(),
	         atomic_fetch_add(&run_seq, 1));
	log_push("runs", line);
	if (block) {
		snprintf(line, sizeof(line), "%ld", jobno);
		log_push("started", line);
	}
	int rc = ctp_token_sleep(token, block ? CTP_FOREVER
	                                      : CTP_MSEC(sleepms));
	if (rc == 0) {
		ctp_output_write(out, "ok", 2);
	} else {
		snprintf(line, sizeof(line), "cut %d", rc);
		ctp_output_write(out, line, strlen(line));
	}
	snprintf(line, sizeof(line), "%ld %s %u %d %" PRId64, jobno, g_name,
	         attempt, rc, realtime_ms());
	log_push("ends", line);
	return rc;
}

static int work_fn(const void *payload, size_t len, unsigned attempt,
                   ctp_output *out, ctp_token *token, void *arg)
{
	(void)arg;
	return run_job(payload, len, attempt, out, token, false);
}

static int block_fn(const void *payload, size_t len, unsigned attempt,
                    ctp_output *out, ctp_token *token, void *arg)
{
	(void)arg;
	return run_job(payload, len, attempt, out, token, true);
}

static int sig_pipe[2];

static void on_signal(int sig)
{
	int saved = errno;
	char c = (char)sig;
	if (write(sig_pipe[1], &c, 1) < 0) {
		/* nothing to do: the pipe is never full with one byte */
	}
	errno = saved;
}

static void *signal_thread(void *arg)
{
	ctp_token *stop = arg;
	char c;
	while (read(sig_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	ctp_token_cancel(stop);
	return NULL;
}

static int cmd_node(int argc, char **argv)
{
	unsigned threads = 2, max_deliveries = 0;
	int64_t claim_after = 0, drain = 0;
	for (int i = 0; i < argc; i++) {
		if (i + 1 >= argc)
			goto usage;
		if (strcmp(argv[i], "--threads") == 0)
			threads = (unsigned)arg_long(argv[++i]);
		else if (strcmp(argv[i], "--claim-after") == 0)
			claim_after = CTP_MSEC(arg_long(argv[++i]));
		else if (strcmp(argv[i], "--drain") == 0)
			drain = CTP_MSEC(arg_long(argv[++i]));
		else if (strcmp(argv[i], "--max-deliveries") == 0)
			max_deliveries = (unsigned)arg_long(argv[++i]);
		else
			goto usage;
	}

	ctp_cluster *c = cluster_open(g_name, claim_after, drain,
	                              max_deliveries);
	int rc = ctp_cluster_register(c, "work", work_fn, NULL, 0);
	if (rc == 0)
		rc = ctp_cluster_register(c, "block", block_fn, NULL, 0);
	if (rc != 0)
		die("ctp_cluster_register", rc);

	ctp_pool *pool;
	ctp_pool_opts po = { .threads = threads, .name = "node",
	                     .on_thread_stop = worker_stop };
	if ((rc = ctp_pool_create(&pool, &po)) != 0)
		die("ctp_pool_create", rc);
	ctp_token *stop;
	if ((rc = ctp_token_create(&stop, NULL)) != 0)
		die("ctp_token_create", rc);

	if (pipe(sig_pipe) != 0)
		die("pipe", -errno);
	pthread_t th;
	if ((rc = pthread_create(&th, NULL, signal_thread, stop)) != 0)
		die("pthread_create", -rc);
	struct sigaction sa = { .sa_handler = on_signal,
	                        .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	printf("serving %s\n", g_name);
	fflush(stdout);
	rc = ctp_cluster_serve(c, pool, stop);
	if (rc != 0)
		die("ctp_cluster_serve", rc);
	int64_t t0 = mono_ms();
	pthread_join(th, NULL);
	ctp_pool_destroy(pool);
	ctp_cluster_close(c);
	ctp_token_release(stop);
	printf("stopped (%" PRId64 " ms after serve returned)\n",
	       mono_ms() - t0);
	return 0;
usage:
	fprintf(stderr, "usage: node_main node URL NS NAME [--threads N] "
	        "[--claim-after MS] [--drain MS] [--max-deliveries N]\n");
	return 2;
}

/* ---- submit ------------------------------------------------------------- */

static int cmd_submit(int argc, char **argv)
{
	if (argc < 1)
		goto usage;
	long count = arg_long(argv[0]), first = 0, retry_ms = 0, pause_us = 0;
	long sleep_lo = 0, sleep_hi = -1;
	const char *kind = "work", *ids = NULL;
	bool with_jobno = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--with-jobno") == 0) {
			with_jobno = true;
			continue;
		}
		if (i + 1 >= argc)
			goto usage;
		if (strcmp(argv[i], "--sleep") == 0)
			sleep_lo = arg_long(argv[++i]);
		else if (strcmp(argv[i], "--sleep-max") == 0)
			sleep_hi = arg_long(argv[++i]);
		else if (strcmp(argv[i], "--kind") == 0)
			kind = argv[++i];
		else if (strcmp(argv[i], "--first") == 0)
			first = arg_long(argv[++i]);
		else if (strcmp(argv[i], "--ids") == 0)
			ids = argv[++i];
		else if (strcmp(argv[i], "--retry-ms") == 0)
			retry_ms = arg_long(argv[++i]);
		else if (strcmp(argv[i], "--pause-us") == 0)
			pause_us = arg_long(argv[++i]);
		else
			goto usage;
	}
	if (sleep_hi < sleep_lo)
		sleep_hi = sleep_lo;
	FILE *f = ids ? fopen(ids, "w") : stdout;
	if (f == NULL)
		die("fopen --ids", -errno);

	ctp_cluster *c = cluster_open(NULL, 0, 0, 0);
	unsigned seed = (unsigned)getpid();
	long jobno = first, failures = 0;
	for (long n = 0; n < count; n++) {
		char payload[64], id[CTP_JOB_ID_SIZE];
		int64_t give_up = mono_ms() + retry_ms;
		int rc;
		for (;;) {
			long s = sleep_lo + (long)(rand_r(&seed) %
			                    (unsigned)(sleep_hi - sleep_lo + 1));
			int len = snprintf(payload, sizeof(payload), "%ld:%ld",
			                   jobno, s);
			rc = ctp_cluster_submit(c, kind, payload, (size_t)len,
			                        NULL, id);
			if (rc == 0 || mono_ms() > give_up)
				break;
			/* nothing was stored: the job number is never reused
			 * all the same, so a job that was stored after all
			 * cannot be mistaken for the retry */
			fprintf(stderr, "node_main submit: job %ld: %d (%s), "
			        "retried as job %ld\n", jobno, rc,
			        ctp_strerror(rc), jobno + 1);
			failures++;
			jobno++;
			sleep_ms(50);
		}
		if (rc != 0)
			die("ctp_cluster_submit", rc);
		if (with_jobno)
			fprintf(f, "%s %ld\n", id, jobno);
		else
			fprintf(f, "%s\n", id);
		fflush(f);
		jobno++;
		if (pause_us > 0)
			usleep((useconds_t)pause_us);
	}
	if (failures)
		fprintf(stderr, "node_main submit: %ld failed submits retried\n",
		        failures);
	if (ids)
		fclose(f);
	ctp_cluster_close(c);
	return 0;
usage:
	fprintf(stderr, "usage: node_main submit URL NS COUNT [--sleep MS] "
	        "[--sleep-max MS] [--kind K] [--first N] [--ids FILE] "
	        "[--with-jobno] [--retry-ms MS] [--pause-us US]\n");
	return 2;
}

/* ---- check -------------------------------------------------------------- */

struct run {
	long     jobno;
	unsigned attempt;
	int64_t  ts;        /* realtime ms the run started */
	char     node[64];
};

struct job {
	char         id[CTP_JOB_ID_SIZE];
	long         jobno;
	int          rc;    /* status/wait's answer */
	ctp_job_info info;
};

struct check_opts {
	int64_t     timeout_ms;
	int         state, status;
	long        attempts;          /* -1: any */
	const char *node;              /* NULL: any */
	const char *rerun[MAX_RERUN_NODES];
	int         nrerun;
	int64_t     event_ms;          /* -1: none */
	int64_t     min_recovery, max_recovery; /* -1: no bound */
};

static int cmp_run(const void *a, const void *b)
{
	const struct run *x = a, *y = b;
	if (x->jobno != y->jobno)
		return x->jobno < y->jobno ? -1 : 1;
	return x->attempt < y->attempt ? -1 : x->attempt > y->attempt;
}

static struct job *read_ids(const char *path, size_t *njobs)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		die("fopen IDSFILE", -errno);
	size_t n = 0, cap = 1024;
	struct job *jobs = calloc(cap, sizeof(*jobs));
	char line[256];
	while (jobs && fgets(line, sizeof(line), f)) {
		char id[CTP_JOB_ID_SIZE];
		long jobno;
		int k = sscanf(line, "%31s %ld", id, &jobno);
		if (k < 1)
			continue;
		if (n == cap) {
			struct job *j = realloc(jobs, 2 * cap * sizeof(*jobs));
			if (j == NULL)
				die("realloc", -ENOMEM);
			memset(j + cap, 0, cap * sizeof(*jobs));
			jobs = j;
			cap *= 2;
		}
		memcpy(jobs[n].id, id, sizeof(id));
		jobs[n].jobno = k == 2 ? jobno : (long)n;
		n++;
	}
	fclose(f);
	if (jobs == NULL)
		die("calloc", -ENOMEM);
	*njobs = n;
	return jobs;
}

static int cmp_line(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static struct run *read_runs(size_t *nruns)
{
	redisContext *rc = NULL;
	redisReply *r = raw_command(&rc, "LRANGE %s:test:runs 0 -1", g_ns);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY)
		die("LRANGE runs", -EIO);
	struct run *runs = calloc(r->elements + 1, sizeof(*runs));
	const char **lines = calloc(r->elements + 1, sizeof(*lines));
	if (runs == NULL || lines == NULL)
		die("calloc", -ENOMEM);
	/* a line pushed twice (its RPUSH retried) is one run: each run's
	 * line is unique (its tag) */
	for (size_t i = 0; i < r->elements; i++)
		lines[i] = r->element[i]->type == REDIS_REPLY_STRING
		           ? r->element[i]->str : "";
	qsort(lines, r->elements, sizeof(*lines), cmp_line);
	size_t n = 0;
	for (size_t i = 0; i < r->elements; i++) {
		struct run *u = &runs[n];
		long long ts;
		if (i > 0 && strcmp(lines[i], lines[i - 1]) == 0)
			continue;
		if (sscanf(lines[i], "%ld %63s %u %lld", &u->jobno,
		           u->node, &u->attempt, &ts) == 4) {
			u->ts = ts;
			n++;
		}
	}
	free(lines);
	freeReplyObject(r);
	redisFree(rc);
	qsort(runs, n, sizeof(*runs), cmp_run);
	*nruns = n;
	return runs;
}

/* Waits until every job has ended or the deadline passed; status first,
 * so only jobs still going cost a subscription each. */
static void collect(ctp_cluster *c, struct job *jobs, size_t n,
                    int64_t deadline)
{
	for (size_t i = 0; i < n; i++) {
		struct job *j = &jobs[i];
		j->rc = ctp_cluster_status(c, j->id, &j->info);
		if (j->rc != 0 || j->info.state == CTP_JOB_DONE ||
		    j->info.state == CTP_JOB_CANCELLED ||
		    j->info.state == CTP_JOB_DEAD)
			continue;
		ctp_job_info_clear(&j->info);
		int64_t left = deadline - mono_ms();
		j->rc = ctp_cluster_wait(c, j->id, CTP_MSEC(left > 0 ? left : 0),
		                         &j->info);
		if (j->rc == -ETIMEDOUT) { /* what it is now */
			ctp_job_info_clear(&j->info);
			j->rc = ctp_cluster_status(c, j->id, &j->info);
		}
	}
}

static bool rerun_allowed(const struct check_opts *o, const char *node)
{
	for (int i = 0; i < o->nrerun; i++)
		if (strcmp(o->rerun[i], node) == 0)
			return true;
	return false;
}

static struct run *runs_of(struct run *runs, size_t nruns, long jobno,
                           size_t *count)
{
	struct run key = { .jobno = jobno, .attempt = 0 };
	size_t lo = 0, hi = nruns;
	while (lo < hi) { /* first run with jobno >= key */
		size_t mid = (lo + hi) / 2;
		if (cmp_run(&runs[mid], &key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	size_t k = lo;
	while (k < nruns && runs[k].jobno == jobno)
		k++;
	*count = k - lo;
	return &runs[lo];
}

static bool complain(int *budget, const char *fmt, ...)
{
	if ((*budget)-- > 0) {
		va_list ap;
		va_start(ap, fmt);
		fprintf(stderr, "check: ");
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		va_end(ap);
	}
	return false;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Two submits never give one id. */
static long count_dup_ids(const struct job *jobs, size_t n)
{
	const char **v = malloc((n + 1) * sizeof(*v));
	if (v == NULL)
		die("malloc", -ENOMEM);
	for (size_t i = 0; i < n; i++)
		v[i] = jobs[i].id;
	qsort(v, n, sizeof(*v), cmp_str);
	long dups = 0;
	for (size_t i = 1; i < n; i++)
		dups += strcmp(v[i - 1], v[i]) == 0;
	free(v);
	return dups;
}

static int cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return x < y ? -1 : x > y;
}

/* Runs of jobs that are not in the ids file: submits that were not
 * acknowledged (they failed) yet stored a job. Lists their job numbers. */
static long foreign_runs(const struct job *jobs, size_t n,
                         const struct run *runs, size_t nruns)
{
	long *v = malloc((n + 1) * sizeof(*v)), count = 0;
	if (v == NULL)
		die("malloc", -ENOMEM);
	for (size_t i = 0; i < n; i++)
		v[i] = jobs[i].jobno;
	qsort(v, n, sizeof(*v), cmp_long);
	for (size_t i = 0; i < nruns; i++) {
		if (bsearch(&runs[i].jobno, v, n, sizeof(*v), cmp_long))
			continue;
		count++;
		fprintf(stderr, "check: job %ld (attempt %u on %s) is not in "
		        "the ids file: a submit that failed stored it\n",
		        runs[i].jobno, runs[i].attempt, runs[i].node);
	}
	free(v);
	return count;
}

static int cmd_check(int argc, char **argv)
{
	if (argc < 1)
		goto usage;
	const char *idsfile = argv[0];
	struct check_opts o = {
		.timeout_ms = 120000, .state = CTP_JOB_DONE, .status = 0,
		.attempts = -1, .event_ms = -1, .min_recovery = -1,
		.max_recovery = -1,
	};
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			goto usage;
		const char *a = argv[i], *v = argv[++i];
		if (strcmp(a, "--timeout") == 0)
			o.timeout_ms = arg_long(v);
		else if (strcmp(a, "--state") == 0)
			o.state = state_of(v);
		else if (strcmp(a, "--status") == 0)
			o.status = (int)arg_long(v);
		else if (strcmp(a, "--attempts") == 0)
			o.attempts = arg_long(v);
		else if (strcmp(a, "--node") == 0)
			o.node = v;
		else if (strcmp(a, "--allow-rerun") == 0 &&
		         o.nrerun < MAX_RERUN_NODES)
			o.rerun[o.nrerun++] = v;
		else if (strcmp(a, "--event-time") == 0)
			o.event_ms = arg_long(v);
		else if (strcmp(a, "--min-recovery") == 0)
			o.min_recovery = arg_long(v);
		else if (strcmp(a, "--max-recovery") == 0)
			o.max_recovery = arg_long(v);
		else
			goto usage;
	}

	size_t njobs, nruns;
	struct job *jobs = read_ids(idsfile, &njobs);
	ctp_cluster *c = cluster_open(NULL, 0, 0, 0);
	int64_t t0 = mono_ms();
	collect(c, jobs, njobs, t0 + o.timeout_ms);
	int64_t wait_ms = mono_ms() - t0;
	struct run *runs = read_runs(&nruns);

	long done = 0, cancelled = 0, dead = 0, other = 0, lost = 0, bad = 0;
	long reran = 0, unlogged = 0, mismatched = 0, badrerun = 0;
	long retries = 0;
	int64_t rec_min = INT64_MAX, rec_max = INT64_MIN;
	char rerun_nodes[256] = "";
	int budget = 20; /* complaints printed */
	bool ok = true;

	long dup_ids = count_dup_ids(jobs, njobs);
	long foreign = foreign_runs(jobs, njobs, runs, nruns);
	if (dup_ids)
		ok = complain(&budget, "%ld ids were given twice", dup_ids);

	for (size_t i = 0; i < njobs; i++) {
		struct job *j = &jobs[i];
		ctp_job_info *in = &j->info;
		if (j->rc == -ENOENT) {
			lost++;
			ok = complain(&budget, "%s (job %ld): lost (-ENOENT)",
			              j->id, j->jobno);
			continue;
		}
		if (j->rc != 0) {
			other++;
			ok = complain(&budget, "%s: status error %d (%s)",
			              j->id, j->rc, ctp_strerror(j->rc));
			continue;
		}
		switch (in->state) {
		case CTP_JOB_DONE: done++; break;
		case CTP_JOB_CANCELLED: cancelled++; break;
		case CTP_JOB_DEAD: dead++; break;
		default: other++; break;
		}
		bool good = in->state == o.state && in->status == o.status;
		if (good && o.attempts >= 0 && in->attempts != o.attempts)
			good = false;
		if (good && o.node && strcmp(in->node, o.node) != 0)
			good = false;
		if (good && in->state == CTP_JOB_DONE && in->status == 0 &&
		    (in->output_len != 2 || memcmp(in->output, "ok", 2) != 0))
			good = false;
		if (!good) {
			bad++;
			ok = complain(&budget, "%s (job %ld): %s status %d "
			              "attempts %u node '%s' output '%.*s'",
			              j->id, j->jobno, state_name(in->state),
			              in->status, in->attempts, in->node,
			              (int)(in->output_len < 40 ? in->output_len
			                                        : 40),
			              in->output ? (char *)in->output : "");
		}

		size_t k;
		struct run *r = runs_of(runs, nruns, j->jobno, &k);
		for (size_t m = 0; m < k; m++) {
			if (r[m].attempt < 2)
				continue;
			retries++;
			if (o.event_ms >= 0) {
				int64_t d = r[m].ts - o.event_ms;
				rec_min = d < rec_min ? d : rec_min;
				rec_max = d > rec_max ? d : rec_max;
			}
		}
		if (k == 0) {
			if (in->state == CTP_JOB_DONE) {
				unlogged++;
				ok = complain(&budget, "%s (job %ld): DONE but "
				              "no run logged", j->id, j->jobno);
			}
			continue;
		}
		const struct run *last = &r[k - 1];
		/* the record must be the last delivery's: a late result
		 * of an earlier one never overwrites it */
		if (in->state == CTP_JOB_DONE &&
		    (in->attempts != last->attempt ||
		     strcmp(in->node, last->node) != 0)) {
			mismatched++;
			ok = complain(&budget, "%s (job %ld): record says "
			              "attempt %u on %s, last run logged is "
			              "attempt %u on %s", j->id, j->jobno,
			              in->attempts, in->node, last->attempt,
			              last->node);
		}
		if (k < 2)
			continue;
		reran++;
		for (size_t m = 0; m + 1 < k; m++) {
			if (r[m].attempt == r[m + 1].attempt) {
				badrerun++;
				ok = complain(&budget, "job %ld: attempt %u "
				              "ran twice (%s, %s)", j->jobno,
				              r[m].attempt, r[m].node,
				              r[m + 1].node);
			} else if (!rerun_allowed(&o, r[m].node)) {
				badrerun++;
				ok = complain(&budget, "job %ld: ran again "
				              "(attempt %u on %s, %" PRId64 " ms "
				              "later) after attempt %u on %s, a "
				              "node that was neither killed nor "
				              "stopped", j->jobno,
				              r[m + 1].attempt, r[m + 1].node,
				              r[m + 1].ts - r[m].ts, r[m].attempt,
				              r[m].node);
			}
			if (!strstr(rerun_nodes, r[m].node) &&
			    strlen(rerun_nodes) + strlen(r[m].node) + 2 <
			    sizeof(rerun_nodes)) {
				if (rerun_nodes[0])
					strcat(rerun_nodes, ",");
				strcat(rerun_nodes, r[m].node);
			}
		}
	}
	if (lost || other || bad)
		ok = false;

	printf("jobs=%zu done=%ld cancelled=%ld dead=%ld other=%ld lost=%ld "
	       "bad=%ld runs=%zu reran=%ld first_runs_on=%s retries=%ld "
	       "bad_reruns=%ld unlogged=%ld mismatched=%ld dup_ids=%ld "
	       "unacked_runs=%ld wait_ms=%" PRId64,
	       njobs, done, cancelled, dead, other, lost, bad, nruns, reran,
	       rerun_nodes[0] ? rerun_nodes : "-", retries, badrerun,
	       unlogged, mismatched, dup_ids, foreign, wait_ms);
	if (o.event_ms >= 0) {
		if (retries)
			printf(" recovery_ms=%" PRId64 "..%" PRId64, rec_min,
			       rec_max);
		else
			printf(" recovery_ms=none");
		if (retries && o.max_recovery >= 0 && rec_max > o.max_recovery) {
			ok = false;
			fprintf(stderr, "check: a retry started %" PRId64 " ms "
			        "after the event, more than %" PRId64 "\n",
			        rec_max, o.max_recovery);
		}
		if (retries && o.min_recovery >= 0 && rec_min < o.min_recovery) {
			ok = false;
			fprintf(stderr, "check: a retry started %" PRId64 " ms "
			        "after the event, before %" PRId64 "\n",
			        rec_min, o.min_recovery);
		}
	}
	printf("\n");

	for (size_t i = 0; i < njobs; i++)
		ctp_job_info_clear(&jobs[i].info);
	free(jobs);
	free(runs);
	ctp_cluster_close(c);
	return ok ? 0 : 1;
usage:
	fprintf(stderr, "usage: node_main check URL NS IDSFILE [--timeout MS] "
	        "[--state S] [--status N] [--attempts N] [--node NAME] "
	        "[--allow-rerun NAME]... [--event-time MS] "
	        "[--min-recovery MS] [--max-recovery MS]\n");
	return 2;
}

/* ---- cancel, status, wait ----------------------------------------------- */

static void print_info(const ctp_job_info *in)
{
	printf("state=%s status=%d attempts=%u node=%s output=%.*s\n",
	       state_name(in->state), in->status, in->attempts,
	       in->node[0] ? in->node : "-", (int)in->output_len,
	       in->output ? (const char *)in->output : "");
}

static int cmd_one(const char *cmd, int argc, char **argv)
{
	if (argc < 1 || (strcmp(cmd, "wait") == 0 && argc < 2)) {
		fprintf(stderr, "usage: node_main cancel|status URL NS ID | "
		        "wait URL NS ID MS\n");
		return 2;
	}
	ctp_cluster *c = cluster_open(NULL, 0, 0, 0);
	ctp_job_info in = { 0 };
	int rc;
	if (strcmp(cmd, "cancel") == 0) {
		rc = ctp_cluster_cancel(c, argv[0]);
		printf("%d\n", rc);
		ctp_cluster_close(c);
		return 0;
	}
	if (strcmp(cmd, "status") == 0)
		rc = ctp_cluster_status(c, argv[0], &in);
	else
		rc = ctp_cluster_wait(c, argv[0], CTP_MSEC(arg_long(argv[1])),
		                      &in);
	if (rc == 0)
		print_info(&in);
	else
		printf("error=%d (%s)\n", rc, ctp_strerror(rc));
	ctp_job_info_clear(&in);
	ctp_cluster_close(c);
	return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		goto usage;
	const char *cmd = argv[1];
	g_url = argv[2];
	g_ns = argv[3];
	if (strcmp(cmd, "node") == 0) {
		if (argc < 5)
			goto usage;
		g_name = argv[4];
		return cmd_node(argc - 5, argv + 5);
	}
	g_name = "client";
	if (strcmp(cmd, "submit") == 0)
		return cmd_submit(argc - 4, argv + 4);
	if (strcmp(cmd, "check") == 0)
		return cmd_check(argc - 4, argv + 4);
	if (strcmp(cmd, "cancel") == 0 || strcmp(cmd, "status") == 0 ||
	    strcmp(cmd, "wait") == 0)
		return cmd_one(cmd, argc - 4, argv + 4);
usage:
	fprintf(stderr, "usage: node_main node|submit|check|cancel|status|wait "
	        "URL NS ...\n");
	return 2;
}
