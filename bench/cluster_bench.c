/*
 * cluster_bench: libctpool-redis (ctpool-redis.h) measured end to end with
 * real node processes on one Redis server, the way bench/cluster_peers.py
 * measures RQ and Celery, and the physical floors of the same trips.
 * bench/cluster.sh runs both side by side and writes bench/results/
 * cluster.md.
 *
 * Usage:
 *   cluster_bench <scenario> --url URL [--nodes K] [--threads T] [--jobs N]
 *                 [--samples S] [--warmup W] [--claim-after-ms MS]
 *   cluster_bench --floor start|cancel --url URL [--samples S] [--warmup W]
 *   cluster_bench node --url URL --ns NS --name NAME [--threads T]
 *                 [--claim-after-ms MS] [--runs FILE]   (what the scenarios
 *                 start; serves until SIGTERM, then stops gracefully)
 *
 * Every scenario makes its own namespace, starts K node processes (this
 * program's `node`, a ctp_pool of T threads each, kinds noop, stamp and
 * block), waits until all K subscribe, runs, stops the nodes with SIGTERM
 * (a graceful stop) and checks every job:
 *   throughput  one thread of this process submits N jobs of kind noop
 *               (payload: the job number; the function logs its number and
 *               returns 0 at once) with ctp_cluster_submit; a second thread
 *               counts the jobs' end messages (PSUBSCRIBE <ns>:end:*, the
 *               channel the header documents), subscribed before the first
 *               submit. Time: first submit -> the N-th end message. Then,
 *               untimed: every id's ctp_cluster_status must be DONE, status
 *               0, attempts 1. Figure jobs_per_s (and submits_per_s).
 *   start       submit-to-start on an idle cluster, one job at a time: the
 *               job (kind stamp) writes CLOCK_MONOTONIC at its start into
 *               its output; latency = that - the time taken just before
 *               ctp_cluster_submit; ctp_cluster_wait fetches it (untimed);
 *               1 ms pause between jobs. Figures start_p50_us, start_p99_us.
 *   cancel      a job of kind block: RPUSHes "jobno attempt pid t" to
 *               <ns>:bench:started, then ctp_token_sleep(token, CTP_FOREVER),
 *               then writes CLOCK_MONOTONIC at its wake into its output and
 *               returns the token's reason. This process BLPOPs the start,
 *               waits 1 ms, calls ctp_cluster_cancel (it must answer
 *               -EINPROGRESS), then ctp_cluster_wait (DONE, -ECANCELED).
 *               after_return = wake - cancel returned; after_call = wake -
 *               just before the call. Figures after_{return,call}_p{50,99}_us.
 *   recover     nodes with claim_after = MS; per sample, after a random
 *               0-500 ms pause (a random phase against the nodes' timers),
 *               a block job starts, 50 ms later the node running it (the
 *               pid it logged) is sent SIGKILL,
 *               and recovery = attempt 2's logged start - just before
 *               kill(); then the job is cancelled (DONE, -ECANCELED,
 *               attempts 2) and a new node replaces the dead one. S
 *               samples per run. Figures recovery_p50_ms, recovery_max_ms.
 * Every job function appends its job number to a runs file (one O_APPEND
 * write per run, also in the Python peers); every job number must appear
 * exactly once (twice for the jobs of `recover`) or the run fails.
 *
 * --floor (peer=floor), no ctpool, one forked child on its own connection:
 *   start   XADD of an entry carrying the time -> the child's XREADGROUP
 *           BLOCK returns it: the bare Streams trip under submit-to-start.
 *   cancel  PUBLISH -> the child's SUBSCRIBE delivers it: the bare trip
 *           under a cross-process cancel (after_call: before PUBLISH;
 *           after_return: after its reply).
 *
 * Output (stdout only), one line per figure, as bench_isolated:
 *   peer=<p> scenario=<s> config=<c> figure=<f> value=<v> unit=<u>
 *   better=lower|higher version=<v> [n=.. ...]
 * and on any failed check or call peer=.. scenario=.. config=..
 * error="<what>" (exit status 1; the node processes are killed first).
 */
#include <ctpool-redis.h>

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
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
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PEER_NAME "ctpool-redis"
#define MAX_NODES 16

/* ---- options, output ------------------------------------------------------ */

static struct {
	const char *url, *ns, *name, *runs;
	const char *scenario;
	char config[64];
	unsigned nodes, threads;
	long jobs, samples, warmup, claim_ms;
	bool floor;
} o = { .nodes = 1, .threads = 2, .jobs = 20000, .samples = 500,
        .warmup = -1, .claim_ms = 1000 };

static char g_ns[80];
static char g_tmpdir[64];
static char g_runs[160];
static pid_t g_nodes[MAX_NODES];
static char g_node_names[MAX_NODES][32];
static unsigned g_node_seq;

static void kill_nodes(int sig, bool wait_them);

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
	struct timespec ts = { ns / 1000000000, ns % 1000000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static const char *peer(void)
{
	return o.floor ? "floor" : PEER_NAME;
}

static void cleanup_tmp(void)
{
	if (g_runs[0])
		unlink(g_runs);
	if (g_tmpdir[0])
		rmdir(g_tmpdir);
}

static noreturn void fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	size_t i;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (i = 0; msg[i]; i++)
		if (msg[i] == '"' || msg[i] == '\n')
			msg[i] = '\'';
	kill_nodes(SIGKILL, true);
	cleanup_tmp();
	printf("peer=%s scenario=%s config=\"%s\" error=\"%s\"\n", peer(),
	       o.scenario, o.config, msg);
	fflush(stdout);
	exit(1);
}

static void out_value(const char *figure, double v, const char *unit,
                      const char *better, const char *fmt, ...)
{
	char extra[256] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(extra, sizeof(extra), fmt, ap);
		va_end(ap);
	}
	printf("peer=%s scenario=%s config=\"%s\" figure=%s value=%.3f unit=%s "
	       "better=%s version=%u.%u.%u%s%s\n", peer(), o.scenario,
	       o.config, figure, v, unit, better, CTP_VERSION_MAJOR,
	       CTP_VERSION_MINOR, CTP_VERSION_PATCH, extra[0] ? " " : "",
	       extra);
	fflush(stdout);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* nearest rank, as driver.c and isolated_peers.py */
static int64_t pct(const int64_t *v, size_t n, unsigned p)
{
	size_t rank = (p * n + 99) / 100;

	return v[(rank ? rank : 1) - 1];
}

/* p50 and p99 of the samples (ns), in us */
static void out_latency(const char *name, int64_t *v, size_t n)
{
	char f[64];

	qsort(v, n, sizeof(*v), cmp_i64);
	snprintf(f, sizeof(f), "%s_p50_us", name);
	out_value(f, pct(v, n, 50) / 1e3, "us", "lower",
	          "n=%zu min_us=%.3f max_us=%.3f", n, v[0] / 1e3,
	          v[n - 1] / 1e3);
	snprintf(f, sizeof(f), "%s_p99_us", name);
	out_value(f, pct(v, n, 99) / 1e3, "us", "lower",
	          "n=%zu min_us=%.3f max_us=%.3f", n, v[0] / 1e3,
	          v[n - 1] / 1e3);
}

/* ---- plain hiredis ----------------------------------------------------------- */

static redisContext *raw_connect(void)
{
	struct timeval tv = { 60, 0 };
	char host[256];
	int port = 6379;
	const char *p = o.url;
	size_t n;
	redisContext *c;

	if (strncmp(p, "redis://", 8) == 0)
		p += 8;
	n = strcspn(p, ":/");
	if (n == 0 || n >= sizeof(host))
		return NULL;
	memcpy(host, p, n);
	host[n] = '\0';
	p += n;
	if (*p == ':')
		port = (int)strtol(p + 1, NULL, 10);
	c = redisConnectWithTimeout(host, port, tv);
	if (c == NULL || c->err) {
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	return c;
}

static redisContext *raw_connect_or_fail(void)
{
	redisContext *c = raw_connect();

	if (c == NULL)
		fail("cannot connect to %s", o.url);
	return c;
}

/* A command that must work (not an error reply). */
static redisReply *must(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	redisReply *r;

	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
	if (r == NULL)
		fail("redis command %.40s: %s", fmt, c->errstr);
	if (r->type == REDIS_REPLY_ERROR)
		fail("redis command %.40s: %s", fmt, r->str);
	return r;
}

/* ---- the node ------------------------------------------------------------------- */

static int g_runs_fd = -1;
static __thread redisContext *tl_conn;

static long job_number(const void *payload, size_t len)
{
	char buf[32];

	if (len >= sizeof(buf))
		return -1;
	memcpy(buf, payload ? payload : "", len);
	buf[len] = '\0';
	return strtol(buf, NULL, 10);
}

static void log_run(long jobno)
{
	char line[32];
	int n;

	if (g_runs_fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%ld\n", jobno);
	if (write(g_runs_fd, line, (size_t)n) != n)
		fprintf(stderr, "cluster_bench node: runs log write failed\n");
}

static int noop_fn(const void *payload, size_t len, unsigned attempt,
                   ctp_output *out, ctp_token *token, void *arg)
{
	(void)attempt, (void)out, (void)token, (void)arg;
	log_run(job_number(payload, len));
	return 0;
}

static int stamp_fn(const void *payload, size_t len, unsigned attempt,
                    ctp_output *out, ctp_token *token, void *arg)
{
	char buf[32];
	int64_t t = mono_ns();
	int n = snprintf(buf, sizeof(buf), "%" PRId64, t);

	(void)attempt, (void)token, (void)arg;
	ctp_output_write(out, buf, (size_t)n);
	log_run(job_number(payload, len));
	return 0;
}

static int block_fn(const void *payload, size_t len, unsigned attempt,
                    ctp_output *out, ctp_token *token, void *arg)
{
	char buf[32];
	long jobno = job_number(payload, len);
	redisReply *r;
	int rc, n;

	(void)arg;
	log_run(jobno);
	if (tl_conn == NULL)
		tl_conn = raw_connect();
	r = tl_conn ? redisCommand(tl_conn, "RPUSH %s:bench:started "
	                           "%ld:%u:%ld:%" PRId64, g_ns, jobno,
	                           attempt, (long)getpid(), mono_ns())
	            : NULL;
	if (r == NULL) {
		fprintf(stderr, "cluster_bench node: cannot log a start\n");
		if (tl_conn)
			redisFree(tl_conn);
		tl_conn = NULL;
	} else {
		freeReplyObject(r);
	}
	rc = ctp_token_sleep(token, CTP_FOREVER);
	n = snprintf(buf, sizeof(buf), "%" PRId64, mono_ns());
	ctp_output_write(out, buf, (size_t)n);
	return rc;
}

static int sig_pipe[2];

static void on_signal(int sig)
{
	int saved = errno;
	char c = (char)sig;

	if (write(sig_pipe[1], &c, 1) < 0) {
		/* one byte never fills the pipe */
	}
	errno = saved;
}

static void *signal_thread(void *arg)
{
	char c;

	while (read(sig_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	ctp_token_cancel(arg);
	return NULL;
}

static int cmd_node(void)
{
	ctp_cluster_opts co = { .url = o.url, .ns = o.ns, .node = o.name,
	                        .claim_after = CTP_MSEC(o.claim_ms),
	                        .drain = CTP_MSEC(200) };
	ctp_pool_opts po = { .threads = o.threads, .name = "node" };
	ctp_cluster *c;
	ctp_pool *pool;
	ctp_token *stop;
	pthread_t th;
	struct sigaction sa = { .sa_handler = on_signal };
	int rc;

	if (o.ns == NULL || o.name == NULL)
		return 2;
	snprintf(g_ns, sizeof(g_ns), "%s", o.ns);
	if (o.runs) {
		g_runs_fd = open(o.runs, O_WRONLY | O_CREAT | O_APPEND |
		                 O_CLOEXEC, 0644);
		if (g_runs_fd < 0) {
			perror("cluster_bench node: runs file");
			return 2;
		}
	}
	if (pipe(sig_pipe) != 0)
		return 2;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	if ((rc = ctp_cluster_connect(&c, &co)) != 0 ||
	    (rc = ctp_cluster_register(c, "noop", noop_fn, NULL, 0)) != 0 ||
	    (rc = ctp_cluster_register(c, "stamp", stamp_fn, NULL, 0)) != 0 ||
	    (rc = ctp_cluster_register(c, "block", block_fn, NULL, 0)) != 0 ||
	    (rc = ctp_pool_create(&pool, &po)) != 0 ||
	    (rc = ctp_token_create(&stop, NULL)) != 0) {
		fprintf(stderr, "cluster_bench node %s: setup: %s\n", o.name,
		        ctp_strerror(rc));
		return 2;
	}
	if (pthread_create(&th, NULL, signal_thread, stop) != 0)
		return 2;
	rc = ctp_cluster_serve(c, pool, stop);
	if (rc != 0) {
		fprintf(stderr, "cluster_bench node %s: serve: %s\n", o.name,
		        ctp_strerror(rc));
		return 2;
	}
	pthread_join(th, NULL);
	ctp_pool_destroy(pool);
	ctp_token_release(stop);
	ctp_cluster_close(c);
	return 0;
}

/* ---- node processes --------------------------------------------------------------- */

static void spawn_node(unsigned slot)
{
	char threads[16], claim[24];
	pid_t pid;

	snprintf(g_node_names[slot], sizeof(g_node_names[slot]), "n%u",
	         g_node_seq++);
	snprintf(threads, sizeof(threads), "%u", o.threads);
	snprintf(claim, sizeof(claim), "%ld", o.claim_ms);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0) {
		char *argv[] = { "cluster_bench", "node", "--url",
		                 (char *)o.url, "--ns", g_ns, "--name",
		                 g_node_names[slot], "--threads", threads,
		                 "--claim-after-ms", claim, "--runs", g_runs,
		                 NULL };
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	g_nodes[slot] = pid;
}

/* Waits until `want` nodes subscribe to <ns>:cancel (ctp_cluster_serve
 * subscribes right before it reads its pending entries and starts reading
 * the streams), then 100 ms more: every node is serving. */
static void wait_nodes(redisContext *rc, unsigned want)
{
	int64_t end = mono_ns() + 20000000000;

	for (;;) {
		redisReply *r = must(rc, "PUBSUB NUMSUB %s:cancel", g_ns);
		long long n = r->type == REDIS_REPLY_ARRAY && r->elements == 2
		              ? r->element[1]->integer : -1;

		freeReplyObject(r);
		if (n >= (long long)want)
			break;
		for (unsigned i = 0; i < o.nodes; i++) {
			int st;

			if (g_nodes[i] > 0 &&
			    waitpid(g_nodes[i], &st, WNOHANG) == g_nodes[i]) {
				g_nodes[i] = 0;
				fail("node %s exited at its start (status %d)",
				     g_node_names[i], st);
			}
		}
		if (mono_ns() > end)
			fail("%u node(s) subscribed after 20 s, want %u", (unsigned)n,
			     want);
		sleep_ns(5000000);
	}
	sleep_ns(100000000);
}

static void start_nodes(redisContext *rc)
{
	char tmpl[] = "/tmp/cluster_bench.XXXXXX";
	int fd;

	if (mkdtemp(tmpl) == NULL)
		fail("mkdtemp: %s", strerror(errno));
	snprintf(g_tmpdir, sizeof(g_tmpdir), "%s", tmpl);
	snprintf(g_runs, sizeof(g_runs), "%s/runs", g_tmpdir);
	fd = open(g_runs, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		fail("runs file: %s", strerror(errno));
	close(fd);
	for (unsigned i = 0; i < o.nodes; i++)
		spawn_node(i);
	wait_nodes(rc, o.nodes);
}

static void kill_nodes(int sig, bool wait_them)
{
	for (unsigned i = 0; i < o.nodes && i < MAX_NODES; i++)
		if (g_nodes[i] > 0)
			kill(g_nodes[i], sig);
	for (unsigned i = 0; wait_them && i < o.nodes && i < MAX_NODES; i++)
		if (g_nodes[i] > 0) {
			waitpid(g_nodes[i], NULL, 0);
			g_nodes[i] = 0;
		}
}

/* SIGTERM (graceful stop); each node must exit 0 within 15 s. */
static void stop_nodes(void)
{
	int64_t end = mono_ns() + 15000000000;

	kill_nodes(SIGTERM, false);
	for (unsigned i = 0; i < o.nodes; i++) {
		int st;

		while (g_nodes[i] > 0) {
			pid_t p = waitpid(g_nodes[i], &st, WNOHANG);

			if (p == g_nodes[i]) {
				g_nodes[i] = 0;
				if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
					fail("node %s stopped with status %d",
					     g_node_names[i], st);
			} else if (mono_ns() > end) {
				fail("node %s still runs 15 s after SIGTERM",
				     g_node_names[i]);
			} else {
				sleep_ns(2000000);
			}
		}
	}
}

/* Every job number in [0, n) ran `want` times, nothing else ran. */
static void check_runs(long n, int want)
{
	FILE *f = fopen(g_runs, "r");
	unsigned char *cnt = calloc((size_t)n, 1);
	long v, total = 0, lost = 0, dup = 0, bad = 0;

	if (f == NULL || cnt == NULL)
		fail("runs file: %s", strerror(errno));
	while (fscanf(f, "%ld", &v) == 1) {
		total++;
		if (v < 0 || v >= n)
			bad++;
		else if (cnt[v] < 255)
			cnt[v]++;
	}
	fclose(f);
	for (v = 0; v < n; v++) {
		if (cnt[v] < want)
			lost++;
		else if (cnt[v] > want)
			dup++;
	}
	free(cnt);
	if (lost || dup || bad)
		fail("runs log: %ld runs of %ld jobs (want %d each): %ld "
		     "missing, %ld run too often, %ld unknown", total, n, want,
		     lost, dup, bad);
}

static ctp_cluster *client(void)
{
	ctp_cluster_opts co = { .url = o.url, .ns = g_ns };
	ctp_cluster *c;
	int rc = ctp_cluster_connect(&c, &co);

	if (rc != 0)
		fail("ctp_cluster_connect: %s", ctp_strerror(rc));
	return c;
}

static void submit(ctp_cluster *c, const char *kind, long jobno,
                   char id[CTP_JOB_ID_SIZE])
{
	char p[24];
	int n = snprintf(p, sizeof(p), "%ld", jobno);
	int rc = ctp_cluster_submit(c, kind, p, (size_t)n, NULL, id);

	if (rc != 0)
		fail("ctp_cluster_submit of job %ld: %s", jobno,
		     ctp_strerror(rc));
}

static int64_t output_ns(const ctp_job_info *in, const char *what)
{
	char buf[32];

	if (in->output_len == 0 || in->output_len >= sizeof(buf))
		fail("%s: output of %zu bytes", what, in->output_len);
	memcpy(buf, in->output, in->output_len);
	buf[in->output_len] = '\0';
	return strtoll(buf, NULL, 10);
}

/* ---- throughput ---------------------------------------------------------------- */

struct ends {
	redisContext *sub;
	long want, got;
	int64_t last;   /* mono ns of the want-th end message */
	const char *err;
};

static void *count_ends(void *arg)
{
	struct ends *e = arg;

	while (e->got < e->want) {
		redisReply *r;

		if (redisGetReply(e->sub, (void **)&r) != REDIS_OK) {
			e->err = e->sub->errstr[0] ? e->sub->errstr
			                           : "subscription lost";
			return NULL;
		}
		if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
		    strcmp(r->element[0]->str, "pmessage") == 0) {
			if (++e->got == e->want)
				e->last = mono_ns();
		}
		freeReplyObject(r);
	}
	return NULL;
}

static void scen_throughput(void)
{
	redisContext *rc = raw_connect_or_fail();
	struct ends e = { .want = o.jobs };
	struct timeval tmo = { 300, 0 };
	ctp_cluster *c;
	char (*ids)[CTP_JOB_ID_SIZE];
	pthread_t th;
	redisReply *r;
	int64_t t0, t_sub;
	long i;

	start_nodes(rc);
	c = client();
	ids = calloc((size_t)o.jobs, sizeof(*ids));
	e.sub = raw_connect_or_fail();
	redisSetTimeout(e.sub, tmo);
	r = must(e.sub, "PSUBSCRIBE %s:end:*", g_ns);
	freeReplyObject(r);
	if (ids == NULL || pthread_create(&th, NULL, count_ends, &e) != 0)
		fail("no memory");

	t0 = mono_ns();
	for (i = 0; i < o.jobs; i++)
		submit(c, "noop", i, ids[i]);
	t_sub = mono_ns();
	pthread_join(th, NULL);
	if (e.err)
		fail("counting end messages: %s (%ld of %ld)", e.err, e.got,
		     o.jobs);

	/* untimed: every record */
	for (i = 0; i < o.jobs; i++) {
		ctp_job_info in;
		int rc2 = ctp_cluster_status(c, ids[i], &in);

		if (rc2 != 0)
			fail("status of job %ld: %s", i, ctp_strerror(rc2));
		if (in.state != CTP_JOB_DONE || in.status != 0 ||
		    in.attempts != 1)
			fail("job %ld: state %d status %d attempts %u, want "
			     "DONE 0 1", i, in.state, in.status, in.attempts);
		ctp_job_info_clear(&in);
	}
	stop_nodes();
	check_runs(o.jobs, 1);
	out_value("jobs_per_s", o.jobs * 1e9 / (double)(e.last - t0), "jobs/s",
	          "higher", "n=%ld seconds=%.3f submits_per_s=%.0f", o.jobs,
	          (e.last - t0) / 1e9, o.jobs * 1e9 / (double)(t_sub - t0));
	free(ids);
	redisFree(e.sub);
	redisFree(rc);
	ctp_cluster_close(c);
}

/* ---- submit-to-start ------------------------------------------------------------ */

static void scen_start(void)
{
	redisContext *rc = raw_connect_or_fail();
	long n = o.warmup + o.samples, i;
	int64_t *v = calloc((size_t)o.samples, sizeof(*v));
	ctp_cluster *c;

	start_nodes(rc);
	c = client();
	for (i = 0; i < n; i++) {
		char id[CTP_JOB_ID_SIZE];
		ctp_job_info in;
		int64_t t0, t1;
		int rc2;

		sleep_ns(1000000); /* idle: every node is back in its read */
		t0 = mono_ns();
		submit(c, "stamp", i, id);
		rc2 = ctp_cluster_wait(c, id, CTP_SEC(30), &in);
		if (rc2 != 0)
			fail("wait for job %ld: %s", i, ctp_strerror(rc2));
		if (in.state != CTP_JOB_DONE || in.status != 0 ||
		    in.attempts != 1)
			fail("job %ld: state %d status %d attempts %u", i,
			     in.state, in.status, in.attempts);
		t1 = output_ns(&in, "stamp");
		ctp_job_info_clear(&in);
		if (i >= o.warmup)
			v[i - o.warmup] = t1 - t0;
	}
	stop_nodes();
	check_runs(n, 1);
	out_latency("start", v, (size_t)o.samples);
	free(v);
	redisFree(rc);
	ctp_cluster_close(c);
}

/* ---- cancel of a running job ------------------------------------------------- */

/* BLPOPs <ns>:bench:started: "jobno:attempt:pid:t" */
static void wait_started(redisContext *rc, long jobno, unsigned attempt,
                         long *pid, int64_t *t)
{
	redisReply *r = must(rc, "BLPOP %s:bench:started 30", g_ns);
	long j = -1;
	unsigned a = 0;

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2)
		fail("job %ld (attempt %u) did not start in 30 s", jobno,
		     attempt);
	if (sscanf(r->element[1]->str, "%ld:%u:%ld:%" SCNd64, &j, &a, pid,
	           t) != 4 || j != jobno || a != attempt)
		fail("started %s, want job %ld attempt %u",
		     r->element[1]->str, jobno, attempt);
	freeReplyObject(r);
}

static void scen_cancel(void)
{
	redisContext *rc = raw_connect_or_fail();
	long n = o.warmup + o.samples, i;
	int64_t *vr = calloc((size_t)o.samples, sizeof(*vr));
	int64_t *vc = calloc((size_t)o.samples, sizeof(*vc));
	ctp_cluster *c;

	start_nodes(rc);
	c = client();
	for (i = 0; i < n; i++) {
		char id[CTP_JOB_ID_SIZE];
		ctp_job_info in;
		int64_t t_call, t_ret, t_wake, ts;
		long pid;
		int rc2;

		submit(c, "block", i, id);
		wait_started(rc, i, 1, &pid, &ts);
		sleep_ns(1000000); /* it sleeps on its token now */
		t_call = mono_ns();
		rc2 = ctp_cluster_cancel(c, id);
		t_ret = mono_ns();
		if (rc2 != -EINPROGRESS)
			fail("cancel of running job %ld: %s, want -EINPROGRESS",
			     i, ctp_strerror(rc2));
		rc2 = ctp_cluster_wait(c, id, CTP_SEC(30), &in);
		if (rc2 != 0)
			fail("wait for cancelled job %ld: %s", i,
			     ctp_strerror(rc2));
		if (in.state != CTP_JOB_DONE || in.status != -ECANCELED ||
		    in.attempts != 1)
			fail("cancelled job %ld: state %d status %d attempts %u",
			     i, in.state, in.status, in.attempts);
		t_wake = output_ns(&in, "block");
		ctp_job_info_clear(&in);
		if (i >= o.warmup) {
			vr[i - o.warmup] = t_wake - t_ret;
			vc[i - o.warmup] = t_wake - t_call;
		}
	}
	stop_nodes();
	check_runs(n, 1);
	out_latency("after_return", vr, (size_t)o.samples);
	out_latency("after_call", vc, (size_t)o.samples);
	free(vr);
	free(vc);
	redisFree(rc);
	ctp_cluster_close(c);
}

/* ---- recovery after SIGKILL ----------------------------------------------------- */

static void scen_recover(void)
{
	redisContext *rc = raw_connect_or_fail();
	int64_t *v = calloc((size_t)o.samples, sizeof(*v));
	uint64_t seed = (uint64_t)getpid();
	ctp_cluster *c;
	long i;

	if (o.nodes < 2)
		fail("recover needs 2 nodes or more");
	start_nodes(rc);
	c = client();
	for (i = 0; i < o.samples; i++) {
		char id[CTP_JOB_ID_SIZE];
		ctp_job_info in;
		int64_t t1, t2, t_kill;
		long pid1, pid2;
		unsigned k;
		int rc2;

		/* a random phase against the nodes' heartbeat and reclaim
		 * timers (without it every sample meets them at the same
		 * point of their period, set by the previous sample) */
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		sleep_ns((int64_t)((seed >> 33) % 500) * 1000000);
		submit(c, "block", i, id);
		wait_started(rc, i, 1, &pid1, &t1);
		for (k = 0; k < o.nodes && g_nodes[k] != (pid_t)pid1; k++)
			;
		if (k == o.nodes)
			fail("job %ld runs in pid %ld: not a node", i, pid1);
		sleep_ns(50000000); /* it runs, its node beats */
		t_kill = mono_ns();
		kill((pid_t)pid1, SIGKILL);
		wait_started(rc, i, 2, &pid2, &t2);
		waitpid((pid_t)pid1, NULL, 0);
		g_nodes[k] = 0;
		if (pid2 == pid1)
			fail("job %ld: attempt 2 in the killed node", i);
		v[i] = t2 - t_kill;
		rc2 = ctp_cluster_cancel(c, id);
		if (rc2 != -EINPROGRESS)
			fail("cancel of re-run job %ld: %s", i,
			     ctp_strerror(rc2));
		rc2 = ctp_cluster_wait(c, id, CTP_SEC(30), &in);
		if (rc2 != 0 || in.state != CTP_JOB_DONE ||
		    in.status != -ECANCELED || in.attempts != 2)
			fail("re-run job %ld: wait %d state %d status %d "
			     "attempts %u", i, rc2, in.state, in.status,
			     in.attempts);
		ctp_job_info_clear(&in);
		spawn_node(k); /* the cluster has K nodes again */
		wait_nodes(rc, o.nodes);
	}
	stop_nodes();
	check_runs(o.samples, 2);
	qsort(v, (size_t)o.samples, sizeof(*v), cmp_i64);
	out_value("recovery_p50_ms", pct(v, (size_t)o.samples, 50) / 1e6, "ms",
	          "lower", "n=%ld min_ms=%.1f max_ms=%.1f claim_after_ms=%ld",
	          o.samples, v[0] / 1e6, v[o.samples - 1] / 1e6, o.claim_ms);
	out_value("recovery_max_ms", v[o.samples - 1] / 1e6, "ms", "lower",
	          "n=%ld min_ms=%.1f claim_after_ms=%ld", o.samples,
	          v[0] / 1e6, o.claim_ms);
	free(v);
	redisFree(rc);
	ctp_cluster_close(c);
}

/* ---- floors --------------------------------------------------------------------- */

/* The child: reads one message per sample and RPUSHes "t_recv" back. */
static noreturn void floor_child(bool streams)
{
	redisContext *c = raw_connect();
	redisContext *back = raw_connect();
	long n = o.warmup + o.samples, i;

	if (c == NULL || back == NULL)
		_exit(2);
	if (!streams) {
		redisReply *r = redisCommand(c, "SUBSCRIBE %s:ch", g_ns);

		if (r == NULL)
			_exit(2);
		freeReplyObject(r);
	}
	for (i = 0; i < n; i++) {
		redisReply *r;
		int64_t t;

		if (streams)
			r = redisCommand(c, "XREADGROUP GROUP g c COUNT 1 BLOCK 0 "
			                 "STREAMS %s:s >", g_ns);
		else if (redisGetReply(c, (void **)&r) != REDIS_OK)
			r = NULL;
		t = mono_ns();
		if (r == NULL || r->type != REDIS_REPLY_ARRAY)
			_exit(3);
		if (streams) {
			/* [[stream, [[entry, [fields]]]]]: acknowledge and
			 * delete it, as a job system does (untimed) */
			redisReply *e = r->element[0]->element[1]->element[0];
			redisReply *a = redisCommand(back, "XACK %s:s g %s",
			                             g_ns, e->element[0]->str);

			if (a)
				freeReplyObject(a);
			a = redisCommand(back, "XDEL %s:s %s", g_ns,
			                 e->element[0]->str);
			if (a)
				freeReplyObject(a);
		}
		freeReplyObject(r);
		r = redisCommand(back, "RPUSH %s:back %" PRId64, g_ns, t);
		if (r == NULL)
			_exit(4);
		freeReplyObject(r);
	}
	_exit(0);
}

static void scen_floor(bool streams)
{
	redisContext *rc = raw_connect_or_fail();
	long n = o.warmup + o.samples, i;
	int64_t *va = calloc((size_t)o.samples, sizeof(*va));
	int64_t *vb = calloc((size_t)o.samples, sizeof(*vb));
	redisReply *r;
	pid_t pid;
	int st;

	if (streams) {
		r = must(rc, "XGROUP CREATE %s:s g $ MKSTREAM", g_ns);
		freeReplyObject(r);
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0)
		floor_child(streams);
	g_nodes[0] = pid;
	o.nodes = 1;
	snprintf(o.config, sizeof(o.config), "bare Redis");
	if (!streams)
		for (int64_t end = mono_ns() + 10000000000;;) {
			long long k;

			r = must(rc, "PUBSUB NUMSUB %s:ch", g_ns);
			k = r->element[1]->integer;
			freeReplyObject(r);
			if (k >= 1)
				break;
			if (mono_ns() > end)
				fail("the floor's subscriber did not subscribe");
			sleep_ns(2000000);
		}
	else
		sleep_ns(100000000);
	for (i = 0; i < n; i++) {
		int64_t t0, t1, t_recv;

		sleep_ns(1000000);
		t0 = mono_ns();
		if (streams)
			r = must(rc, "XADD %s:s * t %" PRId64, g_ns, t0);
		else
			r = must(rc, "PUBLISH %s:ch %" PRId64, g_ns, t0);
		t1 = mono_ns();
		freeReplyObject(r);
		r = must(rc, "BLPOP %s:back 30", g_ns);
		if (r->type != REDIS_REPLY_ARRAY)
			fail("the floor's child did not answer in 30 s");
		t_recv = strtoll(r->element[1]->str, NULL, 10);
		freeReplyObject(r);
		if (i >= o.warmup) {
			va[i - o.warmup] = t_recv - t0;
			vb[i - o.warmup] = t_recv - t1;
		}
	}
	waitpid(pid, &st, 0);
	g_nodes[0] = 0;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("the floor's child exited with status %d", st);
	r = must(rc, "DEL %s:s %s:back", g_ns, g_ns);
	freeReplyObject(r);
	if (streams) {
		out_latency("start", va, (size_t)o.samples);
	} else {
		out_latency("after_return", vb, (size_t)o.samples);
		out_latency("after_call", va, (size_t)o.samples);
	}
	free(va);
	free(vb);
	redisFree(rc);
}

/* ---- main ----------------------------------------------------------------------- */

static noreturn void usage(void)
{
	fprintf(stderr,
	        "usage: cluster_bench [--floor] throughput|start|cancel|recover "
	        "--url URL [--nodes K]\n"
	        "         [--threads T] [--jobs N] [--samples S] [--warmup W] "
	        "[--claim-after-ms MS]\n"
	        "       cluster_bench node --url URL --ns NS --name NAME "
	        "[--threads T]\n"
	        "         [--claim-after-ms MS] [--runs FILE]\n");
	exit(2);
}

static long num(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < 0)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--floor") == 0) {
			o.floor = true;
			continue;
		}
		if (a[0] != '-') {
			if (o.scenario)
				usage();
			o.scenario = a;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		if (strcmp(a, "--url") == 0)
			o.url = argv[++i];
		else if (strcmp(a, "--ns") == 0)
			o.ns = argv[++i];
		else if (strcmp(a, "--name") == 0)
			o.name = argv[++i];
		else if (strcmp(a, "--runs") == 0)
			o.runs = argv[++i];
		else if (strcmp(a, "--nodes") == 0)
			o.nodes = (unsigned)num(argv[++i]);
		else if (strcmp(a, "--threads") == 0)
			o.threads = (unsigned)num(argv[++i]);
		else if (strcmp(a, "--jobs") == 0)
			o.jobs = num(argv[++i]);
		else if (strcmp(a, "--samples") == 0)
			o.samples = num(argv[++i]);
		else if (strcmp(a, "--warmup") == 0)
			o.warmup = num(argv[++i]);
		else if (strcmp(a, "--claim-after-ms") == 0)
			o.claim_ms = num(argv[++i]);
		else
			usage();
	}
	if (o.scenario == NULL || o.url == NULL)
		usage();
	if (strcmp(o.scenario, "node") == 0)
		return cmd_node();
	if (o.nodes < 1 || o.nodes > MAX_NODES || o.threads < 1 ||
	    o.jobs < 1 || o.samples < 1)
		usage();
	if (o.warmup < 0)
		o.warmup = o.samples / 10 < 20 ? o.samples / 10 : 20;
	snprintf(g_ns, sizeof(g_ns), "cb%ld", (long)getpid());
	snprintf(o.config, sizeof(o.config), "%u node%s",
	         o.nodes, o.nodes == 1 ? "" : "s");
	signal(SIGPIPE, SIG_IGN);
	if (o.floor) {
		if (strcmp(o.scenario, "start") == 0)
			scen_floor(true);
		else if (strcmp(o.scenario, "cancel") == 0)
			scen_floor(false);
		else
			usage();
	} else if (strcmp(o.scenario, "throughput") == 0) {
		scen_throughput();
	} else if (strcmp(o.scenario, "start") == 0) {
		scen_start();
	} else if (strcmp(o.scenario, "cancel") == 0) {
		scen_cancel();
	} else if (strcmp(o.scenario, "recover") == 0) {
		scen_recover();
	} else {
		usage();
	}
	cleanup_tmp();
	return 0;
}
