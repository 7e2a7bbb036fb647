/*
 * test_cluster.c: libctpool-redis (include/ctpool-redis.h, DISTRIBUTED.md)
 * against a real redis-server of the run's own (tests/redis/with_redis.sh
 * starts it and sets CTP_REDIS_URL; without it the program exits 77, which
 * meson reports as skipped).
 *
 * A "node" here is a thread of this process calling ctp_cluster_serve with
 * its own ctp_cluster (a distinct opts.node) and its own ctp_pool; the test
 * fires its stop token and joins it. Producers use another ctp_cluster. Every
 * case has a namespace of its own ("t<case>"), so no case sees another's
 * jobs. Raw checks of what is stored (stream lengths, XPENDING, the dead
 * letters, the channels) go through hiredis directly.
 *
 * Covers: submit -> DONE with fn's status and output, payloads (binary, 0
 * bytes, 1 MiB) and attempt 1; two kinds whose entries have the same
 * stream id (ids are per stream) both run; the argument checks of connect, submit,
 * register, serve, cancel, status and wait; unreachable Redis; the URL's db;
 * the default namespace and node name; idempotency keys; delays (and the
 * <ns>:wake channel); timeouts before start and while running; cancel of a
 * queued, delayed, running, finished and unknown job (and <ns>:cancel);
 * result_ttl expiry (records and keys; unfinished jobs never expire); kinds
 * no node has registered; wait (time-out, at once after the end, from
 * another thread, no polling); <ns>:end:<id>; busy nodes leaving jobs to
 * idle ones and taking only as many as they have free workers; graceful stop
 * (drain, hand-back at once with attempt 2 elsewhere, nothing pending under
 * the node's name, no new job taken after stop, stop fired before serve);
 * CTP_JOB_ISOLATED (and only while a worker process is free, with mixed
 * kinds); output cut at CTP_JOB_MAX_PAYLOAD; reconnect after
 * dropped connections (running job's result and a cancel while away); a node
 * killed mid-job (a forked child, SIGKILL) and its job run again with
 * attempt 2; dead letters after max_deliveries (two forked nodes killed);
 * many jobs from several threads each run exactly once.
 *
 * Left to the multi-process fault tests (faults.sh): a node stopped with
 * SIGSTOP past claim_after (fencing of its late result), Redis restarts with
 * AOF, -ECONNREFUSED/-EIO of submit and serve when Redis goes away, -EPROTO.
 *
 * Determinism: job functions post semaphores when they start and end, and
 * tests wait on those; times are only generous upper bounds (BOUND), except
 * the documented lower bound of a delay. Only the test's own thread calls
 * assert_*. A case that fails leaves at its first failed assert: nodes and
 * job controls live on the heap, and the teardown stops the nodes it left
 * running, so the next cases are not disturbed.
 *
 * CTP_TEST_FILTER=GLOB runs only the matching cases, e.g.
 *   CTP_TEST_FILTER='*cancel*' tests/redis/with_redis.sh \
 *       build/tests/redis/test_cluster
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pipe2 (meson defines it for the whole project) */
#endif
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ctpool-redis.h"
#include "scripts.h" /* the library's Lua, run here as a stale node would */
#include "../testutil.h"

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

/* Upper bound for things that must happen: a bug fails instead of hanging. */
#define BOUND CTP_SEC(10)

static const char *g_url;       /* CTP_REDIS_URL */
static char        g_host[64];  /* its host and port, for hiredis */
static int         g_port;
static ctp_pool   *g_iso_pool;  /* processes = 1, made in main() first */
static ctp_pool   *g_mix_pool;  /* threads 2, processes 1, made likewise */
static ctp_pool   *g_iso2_pool; /* threads 1, processes 1, made likewise */

/* ---- hiredis helpers (test thread only) --------------------------------- */

static redisContext *rc_open(void)
{
	struct timeval tv = { 10, 0 };
	redisContext  *r = redisConnectWithTimeout(g_host, g_port, tv);

	assert_non_null(r);
	if (r->err)
		fail_msg("redis connect: %s", r->errstr);
	redisSetTimeout(r, tv);
	return r;
}

static redisReply *rq(redisContext *r, const char *fmt, ...)
{
	va_list     ap;
	redisReply *rep;

	va_start(ap, fmt);
	rep = redisvCommand(r, fmt, ap);
	va_end(ap);
	if (rep == NULL)
		fail_msg("redis command '%s': %s", fmt, r->errstr);
	return rep;
}

/* An integer reply (EXISTS, XLEN, ZCARD, ...). */
static long long rint_(redisContext *r, const char *fmt, ...)
{
	va_list     ap;
	redisReply *rep;
	long long   v;

	va_start(ap, fmt);
	rep = redisvCommand(r, fmt, ap);
	va_end(ap);
	if (rep == NULL)
		fail_msg("redis command '%s': %s", fmt, r->errstr);
	if (rep->type != REDIS_REPLY_INTEGER)
		fail_msg("'%s': not an integer reply (type %d: %s)", fmt,
		         rep->type, rep->type == REDIS_REPLY_ERROR ||
		         rep->type == REDIS_REPLY_STATUS ? rep->str : "");
	v = rep->integer;
	freeReplyObject(rep);
	return v;
}

/* Number of pending entries of group "nodes" on <ns>:q:<kind>, all of them
 * (consumer NULL) or those of one consumer. 0 when the group is missing. */
static long long pending_of(redisContext *r, const char *ns, const char *kind,
                            const char *consumer)
{
	redisReply *rep;
	long long   n;

	if (consumer == NULL)
		rep = rq(r, "XPENDING %s:q:%s nodes", ns, kind);
	else
		rep = rq(r, "XPENDING %s:q:%s nodes - + 1000 %s", ns, kind,
		         consumer);
	if (rep->type == REDIS_REPLY_ERROR) {
		/* NOGROUP: nothing was ever read */
		freeReplyObject(rep);
		return 0;
	}
	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	if (consumer == NULL) {
		assert_true(rep->elements >= 1);
		assert_int_equal(rep->element[0]->type, REDIS_REPLY_INTEGER);
		n = rep->element[0]->integer;
	} else {
		n = (long long)rep->elements;
	}
	freeReplyObject(rep);
	return n;
}

/* A connection subscribed to one channel (bounded reads: 10 s timeout). */
static redisContext *sub_open(const char *channel)
{
	redisContext *r = rc_open();
	redisReply   *rep = rq(r, "SUBSCRIBE %s", channel);

	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	assert_int_equal(rep->elements, 3);
	assert_string_equal(rep->element[0]->str, "subscribe");
	freeReplyObject(rep);
	return r;
}

/* Waits (10 s at most) for the next message on the subscribed channel:
 * 0, or -1 if none came or it was something else. */
static int sub_next(redisContext *r, const char *channel)
{
	redisReply *m = NULL;
	int         ok;

	if (redisGetReply(r, (void **)&m) != REDIS_OK || m == NULL)
		return -1;
	ok = m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
	     m->element[0]->type == REDIS_REPLY_STRING &&
	     strcmp(m->element[0]->str, "message") == 0 &&
	     m->element[1]->type == REDIS_REPLY_STRING &&
	     strcmp(m->element[1]->str, channel) == 0;
	freeReplyObject(m);
	return ok ? 0 : -1;
}

/* ---- job functions ------------------------------------------------------- */

enum {
	M_ECHO,        /* writes "out:" + payload, returns ret */
	M_SILENT,      /* writes nothing, returns ret */
	M_BLOCK,       /* sleeps on its token, returns the reason */
	M_BLOCK_FIRST, /* attempt 1: as M_BLOCK; later attempts: return ret */
	M_GATE,        /* waits for gate (or its token), returns ret (or the
	                  reason) */
	M_COUNT,       /* payload: a 4-byte index; counts per index, returns it */
	M_BIG,         /* writes CTP_JOB_MAX_PAYLOAD bytes then 1 more */
};

enum { MAXRUNS = 64, MAXIDX = 128 };

/* One kind's job function's arg: what its runs saw. */
struct kctl {
	int           mode;
	int           ret;
	const void   *expect;        /* payload every run must see (or NULL) */
	size_t        expect_len;
	atomic_int    runs;
	atomic_int    bad;           /* a convention broken (arg, payload) */
	atomic_int    attempt[MAXRUNS];
	atomic_int    reason[MAXRUNS];  /* token's reason at return */
	atomic_int    wrc[MAXRUNS];     /* M_BIG: the write past the limit */
	_Atomic int64_t start_ns[MAXRUNS];
	atomic_int    per[MAXIDX];   /* M_COUNT: runs per index */
	sem_t         started;       /* posted as each run starts */
	sem_t         ended;         /* posted as each run returns */
	sem_t         gate;          /* M_GATE: one post lets one run end */
};

/* On the heap, so that a node a failed case left running (stopped by
 * the teardown) never runs into a dead stack frame. */
static struct kctl *kctl_new(int mode, int ret)
{
	struct kctl *k = calloc(1, sizeof(*k));

	assert_non_null(k);
	k->mode = mode;
	k->ret = ret;
	tu_sem_init(&k->started, 0);
	tu_sem_init(&k->ended, 0);
	tu_sem_init(&k->gate, 0);
	return k;
}

static void kctl_free(struct kctl *k)
{
	sem_destroy(&k->started);
	sem_destroy(&k->ended);
	sem_destroy(&k->gate);
	free(k);
}

enum { BIG_CHUNK = 1 << 20 };
static unsigned char *g_big_chunk; /* M_BIG writes this 64 times */

static int job_fn(const void *payload, size_t len, unsigned attempt,
                  ctp_output *out, ctp_token *token, void *arg)
{
	struct kctl *k = arg;
	int          i = atomic_fetch_add(&k->runs, 1);
	int          slot = i < MAXRUNS ? i : MAXRUNS - 1;
	int          rc = k->ret;

	atomic_store(&k->start_ns[slot], tu_now_ns());
	atomic_store(&k->attempt[slot], (int)attempt);
	if ((payload == NULL) != (len == 0))
		atomic_fetch_add(&k->bad, 1);
	if (k->expect != NULL &&
	    (len != k->expect_len || memcmp(payload, k->expect, len) != 0))
		atomic_fetch_add(&k->bad, 1);
	tu_sem_post(&k->started);
	switch (k->mode) {
	case M_ECHO:
		if (ctp_output_write(out, "out:", 4) != 0 ||
		    ctp_output_write(out, payload, len) != 0)
			atomic_fetch_add(&k->bad, 1);
		break;
	case M_SILENT:
		break;
	case M_BLOCK:
		rc = ctp_token_sleep(token, CTP_FOREVER);
		break;
	case M_BLOCK_FIRST:
		if (attempt == 1)
			rc = ctp_token_sleep(token, CTP_FOREVER);
		break;
	case M_GATE:
		while (sem_trywait(&k->gate) != 0) {
			int r = ctp_token_sleep(token, CTP_MSEC(1));

			if (r != 0) {
				rc = r;
				break;
			}
		}
		break;
	case M_COUNT: {
		uint32_t idx = UINT32_MAX;

		if (len == sizeof(idx))
			memcpy(&idx, payload, sizeof(idx));
		if (idx < MAXIDX) {
			atomic_fetch_add(&k->per[idx], 1);
			rc = (int)idx;
		} else {
			atomic_fetch_add(&k->bad, 1);
			rc = -1;
		}
		break;
	}
	case M_BIG: {
		int fails = 0;

		for (size_t n = 0; n < CTP_JOB_MAX_PAYLOAD; n += BIG_CHUNK)
			fails += ctp_output_write(out, g_big_chunk,
			                          BIG_CHUNK) != 0;
		atomic_store(&k->wrc[slot], ctp_output_write(out, "Z", 1));
		rc = fails;
		break;
	}
	}
	atomic_store(&k->reason[slot], ctp_token_reason(token));
	tu_sem_post(&k->ended);
	return rc;
}

/* CTP_JOB_ISOLATED: runs in the pool's worker process. Writes
 * "iso:<payload>:a<attempt>:p<pid>" and returns 17. */
static int iso_wait_fn(const void *payload, size_t len, unsigned attempt,
                       ctp_output *out, ctp_token *token, void *arg);
static void wait_state(ctp_cluster *c, const char *id, int state);

static int iso_fn(const void *payload, size_t len, unsigned attempt,
                  ctp_output *out, ctp_token *token, void *arg)
{
	char tail[64];
	int  n;

	(void)token;
	if (arg != NULL || (payload == NULL) != (len == 0))
		return -1;
	n = snprintf(tail, sizeof(tail), ":a%u:p%d", attempt, (int)getpid());
	if (ctp_output_write(out, "iso:", 4) != 0 ||
	    ctp_output_write(out, payload, len) != 0 ||
	    ctp_output_write(out, tail, (size_t)n) != 0)
		return -2;
	return 17;
}

/* ---- clusters and nodes -------------------------------------------------- */

static ctp_cluster_opts opts_for(const char *ns)
{
	ctp_cluster_opts o = { 0 };

	o.url = g_url;
	o.ns = ns;
	o.drain = CTP_MSEC(100); /* a stop never waits long for a stuck job */
	return o;
}

static ctp_cluster *producer(ctp_cluster_opts o)
{
	ctp_cluster *c = NULL;

	o.node = "producer";
	assert_int_equal(ctp_cluster_connect(&c, &o), 0);
	assert_non_null(c);
	return c;
}

struct node {
	ctp_cluster *c;
	ctp_pool    *pool;
	ctp_token   *stop;
	pthread_t    thr;
	int          rc;       /* serve's return */
	bool         running;
	char         name[64];
};

/* Every node not yet stopped: the teardown stops those a failed case left
 * (cmocka leaves a case at its first failed assert). */
enum { MAXNODES = 16 };
static struct node *g_nodes[MAXNODES];

static struct node *node_new_pool(ctp_cluster_opts o, const char *name,
                                  ctp_pool *pool)
{
	struct node *n = calloc(1, sizeof(*n));
	int          i;

	assert_non_null(n);
	for (i = 0; i < MAXNODES && g_nodes[i] != NULL; i++)
		;
	assert_true(i < MAXNODES);
	g_nodes[i] = n;
	n->pool = pool;
	snprintf(n->name, sizeof(n->name), "%s", name ? name : "(default)");
	o.node = name;
	assert_int_equal(ctp_token_create(&n->stop, NULL), 0);
	assert_int_equal(ctp_cluster_connect(&n->c, &o), 0);
	return n;
}

static struct node *node_new(ctp_cluster_opts o, const char *name,
                             unsigned threads)
{
	ctp_pool_opts po = { .threads = threads, .name = name };
	ctp_pool     *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, &po), 0);
	return node_new_pool(o, name, pool);
}

static void node_reg(struct node *n, const char *kind, struct kctl *k)
{
	assert_int_equal(ctp_cluster_register(n->c, kind, job_fn, k, 0), 0);
}

static void *node_main(void *arg)
{
	struct node *n = arg;

	n->rc = ctp_cluster_serve(n->c, n->pool, n->stop);
	return NULL;
}

#define SERVING 0x7eadbeef /* n->rc while serve has not returned */

static void node_start(struct node *n)
{
	n->rc = SERVING;
	n->thr = tu_spawn(node_main, n);
	n->running = true;
}

/* Fires stop and joins the serving thread; serve's return. */
static int node_join(struct node *n)
{
	if (!n->running)
		return 0;
	ctp_token_cancel(n->stop);
	tu_join(n->thr);
	n->running = false;
	return n->rc;
}

/* node_join, then frees everything. */
static int node_free(struct node *n)
{
	int rc = node_join(n);

	for (int i = 0; i < MAXNODES; i++)
		if (g_nodes[i] == n)
			g_nodes[i] = NULL;
	ctp_pool_destroy(n->pool);
	ctp_cluster_close(n->c);
	ctp_token_release(n->stop);
	free(n);
	return rc;
}

/* node_free; asserts serve returned 0. */
static void node_stop(struct node *n)
{
	assert_int_equal(node_free(n), 0);
}

static int teardown_nodes(void **state)
{
	(void)state;
	for (int i = 0; i < MAXNODES; i++)
		if (g_nodes[i] != NULL)
			(void)node_free(g_nodes[i]);
	return 0;
}

/* ---- job helpers --------------------------------------------------------- */

static void submit_ok(ctp_cluster *c, const char *kind, const void *payload,
                      size_t len, const ctp_job_opts *jo,
                      char id[CTP_JOB_ID_SIZE])
{
	memset(id, 0, CTP_JOB_ID_SIZE);
	assert_int_equal(ctp_cluster_submit(c, kind, payload, len, jo, id), 0);
	assert_true(id[0] != '\0');
	assert_true(strnlen(id, CTP_JOB_ID_SIZE) < CTP_JOB_ID_SIZE);
}

static void status_ok(ctp_cluster *c, const char *id, ctp_job_info *info)
{
	memset(info, 0, sizeof(*info));
	assert_int_equal(ctp_cluster_status(c, id, info), 0);
}

#define ANY_STATUS   0x7eadbeef
#define ANY_ATTEMPTS (-1)

/* The record's state, status (or ANY_STATUS), attempts (or ANY_ATTEMPTS)
 * and node (or NULL: any), checked in one go. */
static void expect_status(ctp_cluster *c, const char *id, int state,
                          int status, int attempts, const char *node)
{
	ctp_job_info info;

	status_ok(c, id, &info);
	int      st = info.state, stat = info.status;
	unsigned at = info.attempts;
	char     nd[64];

	memcpy(nd, info.node, sizeof(nd));
	nd[63] = '\0';
	ctp_job_info_clear(&info);
	assert_int_equal(st, state);
	if (status != ANY_STATUS)
		assert_int_equal(stat, status);
	if (attempts != ANY_ATTEMPTS)
		assert_int_equal(at, (unsigned)attempts);
	if (node != NULL)
		assert_string_equal(nd, node);
}

/* Prints every node whose serve returned while it should still run. */
static void print_nodes_gone(void)
{
	for (int i = 0; i < MAXNODES; i++)
		if (g_nodes[i] != NULL && g_nodes[i]->running &&
		    g_nodes[i]->rc != SERVING)
			print_error("node %s: serve returned %d (%s)\n",
			            g_nodes[i]->name, g_nodes[i]->rc,
			            ctp_strerror(g_nodes[i]->rc));
}

/* Waits up to BOUND for an event a job function posts; fails the case
 * (not the whole run) if it never comes. */
#define sem_wait_ok(sem) sem_wait_ok_(sem, #sem)
static void sem_wait_ok_(sem_t *sem, const char *what)
{
	struct timespec ts;
	int             rc;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += BOUND / CTP_SEC(1);
	while ((rc = sem_timedwait(sem, &ts)) != 0 && errno == EINTR)
		;
	if (rc != 0) {
		print_nodes_gone();
		fail_msg("%s: not posted within %d s", what,
		         (int)(BOUND / CTP_SEC(1)));
	}
}

static void wait_ok(ctp_cluster *c, const char *id, ctp_job_info *info)
{
	int rc;

	memset(info, 0, sizeof(*info));
	rc = ctp_cluster_wait(c, id, BOUND, info);
	if (rc != 0) {
		ctp_job_info now = { 0 };
		int          src = ctp_cluster_status(c, id, &now);

		print_error("wait for job %s: %d (%s); status %d: state %d "
		            "status %d attempts %u node '%s'\n", id, rc,
		            ctp_strerror(rc), src, now.state, now.status,
		            now.attempts, now.node);
		ctp_job_info_clear(&now);
		/* a serve that returned early explains a job never taken */
		print_nodes_gone();
	}
	assert_int_equal(rc, 0);
}

/* Waits for the job's end and checks state and status. */
static void wait_end(ctp_cluster *c, const char *id, int state, int status)
{
	ctp_job_info info;

	wait_ok(c, id, &info);
	int st = info.state, stat = info.status;

	ctp_job_info_clear(&info);
	assert_int_equal(st, state);
	assert_int_equal(stat, status);
}

/* ---- submit, run, payloads ------------------------------------------------ */

/* A job submitted before any node serves is stored (a hash record and a
 * stream entry), waits QUEUED, then runs to DONE: status = fn's return,
 * output = what fn wrote, attempt 1, the node's name; the payload (binary,
 * NULs included) arrives intact and arg is passed through. */
static void test_cluster_submit_runs_to_done(void **state)
{
	(void)state;
	static const unsigned char pl[] = { 'h', 'e', 0, 'l', 0xff, 'o', 0 };
	ctp_cluster_opts o = opts_for("trun");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE], id2[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	k = kctl_new(M_ECHO, 42);
	k->expect = pl;
	k->expect_len = sizeof(pl);
	submit_ok(p, "echo", pl, sizeof(pl), NULL, id);
	submit_ok(p, "echo", pl, sizeof(pl), &(ctp_job_opts){ 0 }, id2);
	assert_string_not_equal(id, id2);

	/* stored as the header says, before any node exists */
	assert_int_equal(rint_(r, "EXISTS trun:job:%s", id), 1);
	redisReply *t = rq(r, "TYPE trun:job:%s", id);
	assert_string_equal(t->str, "hash");
	freeReplyObject(t);
	assert_int_equal(rint_(r, "XLEN trun:q:echo"), 2);
	status_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_QUEUED);
	assert_int_equal(info.attempts, 0);
	assert_string_equal(info.node, "");
	assert_null(info.output);
	assert_int_equal(info.output_len, 0);
	ctp_job_info_clear(&info);

	n = node_new(o, "trun-n1", 2);
	node_reg(n, "echo", k);
	node_start(n);

	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 42);
	assert_int_equal(info.attempts, 1);
	assert_string_equal(info.node, "trun-n1");
	assert_int_equal(info.output_len, 4 + sizeof(pl));
	assert_non_null(info.output);
	assert_memory_equal(info.output, "out:", 4);
	assert_memory_equal((char *)info.output + 4, pl, sizeof(pl));
	ctp_job_info_clear(&info);
	assert_null(info.output);
	assert_int_equal(info.output_len, 0);
	assert_int_equal(info.state, 0);

	/* status after the end says the same as wait */
	status_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 42);
	assert_int_equal(info.output_len, 4 + sizeof(pl));
	ctp_job_info_clear(&info);

	wait_end(p, id2, CTP_JOB_DONE, 42);
	assert_int_equal(atomic_load(&k->runs), 2);
	assert_int_equal(atomic_load(&k->attempt[0]), 1);
	assert_int_equal(atomic_load(&k->attempt[1]), 1);
	assert_int_equal(atomic_load(&k->bad), 0);

	node_stop(n);
	assert_int_equal(pending_of(r, "trun", "echo", NULL), 0);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* len 0: fn gets payload NULL (also when a non-NULL pointer was given); a
 * job that writes nothing has output NULL, output_len 0; status 0 and a
 * negative status are kept as returned. */
static void test_cluster_payload_empty(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tempty");
	ctp_cluster     *p = producer(o);
	struct kctl     *ke, *ks;
	struct node     *n;
	char             a[CTP_JOB_ID_SIZE], b[CTP_JOB_ID_SIZE];
	char             c[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	ke = kctl_new(M_ECHO, 0);
	ks = kctl_new(M_SILENT, -EPERM);
	n = node_new(o, "tempty-n1", 2);
	node_reg(n, "echo", ke);
	node_reg(n, "silent", ks);
	node_start(n);

	submit_ok(p, "echo", NULL, 0, NULL, a);
	submit_ok(p, "echo", "ignored", 0, NULL, b);

	wait_ok(p, a, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 0);
	assert_int_equal(info.output_len, 4);
	assert_memory_equal(info.output, "out:", 4);
	ctp_job_info_clear(&info);
	wait_end(p, b, CTP_JOB_DONE, 0);
	/* (after the others: two kinds' entries submitted in one millisecond
	 * are test_cluster_same_entry_id_in_two_kinds's business) */
	submit_ok(p, "silent", NULL, 0, NULL, c);
	wait_ok(p, c, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, -EPERM);
	assert_null(info.output);
	assert_int_equal(info.output_len, 0);
	ctp_job_info_clear(&info);

	node_stop(n);
	assert_int_equal(atomic_load(&ke->runs), 2);
	assert_int_equal(atomic_load(&ks->runs), 1);
	assert_int_equal(atomic_load(&ke->bad), 0);
	assert_int_equal(atomic_load(&ks->bad), 0);
	ctp_cluster_close(p);
	kctl_free(ke);
	kctl_free(ks);
}

/* A 1 MiB payload arrives intact and comes back as output. */
static void test_cluster_payload_1mib(void **state)
{
	(void)state;
	const size_t     len = (size_t)1 << 20;
	unsigned char   *pl = malloc(len);
	ctp_cluster_opts o = opts_for("tbig");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	uint32_t         s = 12345;

	assert_non_null(pl);
	for (size_t i = 0; i < len; i++)
		pl[i] = (unsigned char)tu_rng_next(&s);
	k = kctl_new(M_ECHO, 3);
	k->expect = pl;
	k->expect_len = len;
	n = node_new(o, "tbig-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);

	submit_ok(p, "echo", pl, len, NULL, id);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 3);
	assert_int_equal(info.output_len, 4 + len);
	assert_memory_equal(info.output, "out:", 4);
	assert_memory_equal((char *)info.output + 4, pl, len);
	ctp_job_info_clear(&info);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 1);
	assert_int_equal(atomic_load(&k->bad), 0);
	ctp_cluster_close(p);
	kctl_free(k);
	free(pl);
}

/* The last entry id of <ns>:q:<kind> into buf ("" if none). */
static void last_entry(redisContext *r, const char *ns, const char *kind,
                       char *buf, size_t len)
{
	redisReply *rep = rq(r, "XREVRANGE %s:q:%s + - COUNT 1", ns, kind);

	buf[0] = '\0';
	if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1)
		snprintf(buf, len, "%s", rep->element[0]->element[0]->str);
	freeReplyObject(rep);
}

/* Stream entry ids are per stream: two jobs of two kinds may have the same
 * one (submitted in the same millisecond). Both must run. The case submits
 * pairs until it has such a pair (nearly always the first), then serves
 * both kinds on one node. */
static void test_cluster_same_entry_id_in_two_kinds(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tsame");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *ka, *kb;
	struct node     *n;
	char             a[CTP_JOB_ID_SIZE], b[CTP_JOB_ID_SIZE];
	char             ea[64], eb[64];
	bool             same = false;

	ka = kctl_new(M_SILENT, 1);
	kb = kctl_new(M_SILENT, 2);
	for (int i = 0; i < 200 && !same; i++) {
		submit_ok(p, "ka", NULL, 0, NULL, a);
		submit_ok(p, "kb", NULL, 0, NULL, b);
		last_entry(r, "tsame", "ka", ea, sizeof(ea));
		last_entry(r, "tsame", "kb", eb, sizeof(eb));
		same = strcmp(ea, eb) == 0;
		if (!same) {
			assert_int_equal(ctp_cluster_cancel(p, a), 0);
			assert_int_equal(ctp_cluster_cancel(p, b), 0);
		}
	}
	if (!same)
		skip(); /* never the same millisecond: nothing to show */
	n = node_new(o, "tsame-n1", 2);
	node_reg(n, "ka", ka);
	node_reg(n, "kb", kb);
	node_start(n);
	wait_end(p, a, CTP_JOB_DONE, 1);
	wait_end(p, b, CTP_JOB_DONE, 2);
	node_stop(n);
	assert_int_equal(atomic_load(&ka->runs), 1);
	assert_int_equal(atomic_load(&kb->runs), 1);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(ka);
	kctl_free(kb);
}

/* ---- argument checks ------------------------------------------------------ */

static char *repeat(char *buf, char ch, size_t n)
{
	memset(buf, ch, n);
	buf[n] = '\0';
	return buf;
}

/* Every bad input of submit is refused and stores nothing; the limits
 * themselves (64-byte kind, 256-byte key) are accepted. A payload over
 * CTP_JOB_MAX_PAYLOAD is -EMSGSIZE before anything reads it: the buffer
 * passed is 16 bytes (ASan would see a read past it). */
static void test_cluster_submit_rejects_bad_input(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tbad");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	char             id[CTP_JOB_ID_SIZE], id2[CTP_JOB_ID_SIZE];
	char             k65[66], k64[65], key257[258], key256[257];
	unsigned char    small[16] = { 0 };
	redisReply      *rep;

	repeat(k65, 'a', 65);
	repeat(k64, 'b', 64);
	repeat(key257, 'k', 257);
	repeat(key256, 'K', 256);

	assert_int_equal(ctp_cluster_submit(NULL, "k", "x", 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1, NULL, NULL),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, NULL, "x", 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "", "x", 1, NULL, id), -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, k65, "x", 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "a/b", "x", 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "a b", "x", 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "a:b", "x", 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", NULL, 1, NULL, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1,
	                 &(ctp_job_opts){ .delay = CTP_MSEC(-5) }, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1,
	                 &(ctp_job_opts){ .delay = INT64_MIN }, id), -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1,
	                 &(ctp_job_opts){ .timeout = CTP_MSEC(-5) }, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1,
	                 &(ctp_job_opts){ .timeout = INT64_MIN }, id),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1,
	                 &(ctp_job_opts){ .key = "" }, id), -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", "x", 1,
	                 &(ctp_job_opts){ .key = key257 }, id), -EINVAL);
	assert_int_equal(ctp_cluster_submit(p, "k", small,
	                 CTP_JOB_MAX_PAYLOAD + 1, NULL, id), -EMSGSIZE);
	assert_int_equal(ctp_cluster_submit(p, "k", small, SIZE_MAX, NULL, id),
	                 -EMSGSIZE);

	/* nothing of it was stored */
	rep = rq(r, "KEYS tbad:*");
	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	assert_int_equal(rep->elements, 0);
	freeReplyObject(rep);

	/* the limits are accepted */
	submit_ok(p, k64, "x", 1, NULL, id);
	submit_ok(p, "Az09_.-", "x", 1, NULL, id2);
	submit_ok(p, "k", "x", 1, &(ctp_job_opts){ .key = key256 }, id);
	/* a key may hold any characters */
	submit_ok(p, "k", "x", 1, &(ctp_job_opts){ .key = "order 42: x/y" },
	          id2);
	assert_string_not_equal(id, id2);

	ctp_cluster_close(p);
	redisFree(r);
}

/* connect's result for o, closing the cluster if it was made. */
static int connect_rc(ctp_cluster_opts o)
{
	ctp_cluster *c = NULL;
	int          rc = ctp_cluster_connect(&c, &o);

	if (rc == 0)
		ctp_cluster_close(c);
	return rc;
}

/* Bad URLs, namespaces, node names and durations are -EINVAL; the limits
 * themselves are accepted. */
static void test_cluster_connect_rejects_bad_options(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tconn");
	char             url[300], ns65[66], ns64[65], nd64[65], nd63[64];

	repeat(ns65, 'n', 65);
	repeat(ns64, 'n', 64);
	repeat(nd64, 'd', 64);
	repeat(nd63, 'd', 63);

	assert_int_equal(ctp_cluster_connect(NULL, &o), -EINVAL);

#define BAD(field, value)                                              \
	do {                                                           \
		ctp_cluster_opts b = o;                                \
		b.field = value;                                       \
		assert_int_equal(connect_rc(b), -EINVAL);              \
	} while (0)
#define GOOD(field, value)                                             \
	do {                                                           \
		ctp_cluster_opts b = o;                                \
		b.field = value;                                       \
		assert_int_equal(connect_rc(b), 0);                    \
	} while (0)

	BAD(url, "http://x");
	BAD(url, "redis://");
	BAD(url, "redis://127.0.0.1:notaport");
	BAD(url, "redis://127.0.0.1:99999");
	snprintf(url, sizeof(url), "redis://%s:%d/notadb", g_host, g_port);
	BAD(url, url);
	BAD(ns, ns65);
	BAD(ns, "a:b");
	BAD(ns, "a b");
	BAD(ns, "a/b");
	BAD(node, "");
	BAD(node, nd64);
	BAD(node, "a b");
	BAD(node, "a/b");
	BAD(claim_after, CTP_MSEC(9));
	BAD(claim_after, CTP_MSEC(-5));
	BAD(result_ttl, CTP_USEC(999));
	BAD(result_ttl, CTP_MSEC(-5));
	BAD(drain, CTP_MSEC(-5));
	BAD(drain, INT64_MIN);

	GOOD(ns, ns64);
	GOOD(ns, "Az09_.-");
	GOOD(node, nd63);
	GOOD(node, "Az09_.-");
	GOOD(claim_after, CTP_MSEC(10));
	GOOD(result_ttl, CTP_MSEC(1));
	GOOD(drain, CTP_FOREVER);
	GOOD(max_deliveries, 1);
	GOOD(url, g_url);
	snprintf(url, sizeof(url), "redis://%s:%d/0", g_host, g_port);
	GOOD(url, url);
#undef BAD
#undef GOOD
	ctp_cluster_close(NULL); /* a no-op */
	ctp_job_info_clear(NULL); /* a no-op */
}

/* A closed loopback port (bound, never listening: nobody can take it during
 * the call) and a missing unix socket are -ECONNREFUSED, at once. */
static void test_cluster_connect_unreachable(void **state)
{
	(void)state;
	struct sockaddr_in a = { 0 };
	socklen_t          alen = sizeof(a);
	ctp_cluster_opts   o = opts_for("tunreach");
	char               url[64];
	int                fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int64_t            t0;

	assert_true(fd >= 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ntohs(a.sin_port));

	t0 = tu_now_ns();
	o.url = url;
	assert_int_equal(connect_rc(o), -ECONNREFUSED);
	o.url = "unix:/nonexistent-ctp-dir/redis.sock";
	assert_int_equal(connect_rc(o), -ECONNREFUSED);
	assert_true(tu_now_ns() - t0 < BOUND);
	close(fd);
}

/* "redis://host:port/db" selects that database. */
static void test_cluster_url_selects_db(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tdb");
	ctp_cluster     *p;
	redisContext    *r = rc_open();
	char             url[128], id[CTP_JOB_ID_SIZE];
	redisReply      *rep;

	snprintf(url, sizeof(url), "redis://%s:%d/3", g_host, g_port);
	o.url = url;
	p = producer(o);
	submit_ok(p, "echo", "x", 1, NULL, id);
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	assert_int_equal(rint_(r, "EXISTS tdb:job:%s", id), 0);
	rep = rq(r, "SELECT 3");
	freeReplyObject(rep);
	assert_int_equal(rint_(r, "EXISTS tdb:job:%s", id), 1);
	ctp_cluster_close(p);
	redisFree(r);
}

/* ns NULL is "ctp"; node NULL is "<host>-<pid>". */
static void test_cluster_default_ns_and_node(void **state)
{
	(void)state;
	ctp_cluster_opts o = { .url = g_url, .drain = CTP_MSEC(100) };
	ctp_cluster     *p = NULL;
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE], want[160], host[128] = "";
	ctp_job_info     info;

	k = kctl_new(M_ECHO, 1);
	assert_int_equal(ctp_cluster_connect(&p, &o), 0);
	n = node_new(o, NULL, 1);
	node_reg(n, "echo", k);
	node_start(n);

	submit_ok(p, "echo", "x", 1, NULL, id);
	assert_int_equal(rint_(r, "EXISTS ctp:job:%s", id), 1);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	gethostname(host, sizeof(host) - 1);
	snprintf(want, sizeof(want), "%s-%d", host, (int)getpid());
	if (strlen(want) < 64)
		assert_string_equal(info.node, want);
	else
		assert_true(strlen(info.node) > 0);
	ctp_job_info_clear(&info);

	node_stop(n);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* ---- idempotency keys ----------------------------------------------------- */

/* A second submit with the same key returns the first's id and stores no
 * second job (one record, one stream entry, the first's payload runs); the
 * key maps to the id; it still does after the job ended. */
static void test_cluster_idempotency_key(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tidem");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             a[CTP_JOB_ID_SIZE], b[CTP_JOB_ID_SIZE];
	char             c[CTP_JOB_ID_SIZE], d[CTP_JOB_ID_SIZE];
	ctp_job_opts     jo = { .key = "order-1" };
	ctp_job_info     info;
	redisReply      *rep;

	k = kctl_new(M_ECHO, 0);
	submit_ok(p, "echo", "first", 5, &jo, a);
	submit_ok(p, "echo", "second", 6, &jo, b);
	assert_string_equal(a, b);
	/* the same key with other options too */
	submit_ok(p, "echo", "third", 5,
	          &(ctp_job_opts){ .key = "order-1", .delay = CTP_SEC(60) }, b);
	assert_string_equal(a, b);

	rep = rq(r, "KEYS tidem:job:*");
	assert_int_equal(rep->elements, 1);
	freeReplyObject(rep);
	assert_int_equal(rint_(r, "XLEN tidem:q:echo"), 1);
	assert_int_equal(rint_(r, "EXISTS tidem:delayed:echo"), 0);
	rep = rq(r, "GET tidem:key:order-1");
	assert_int_equal(rep->type, REDIS_REPLY_STRING);
	assert_string_equal(rep->str, a);
	freeReplyObject(rep);

	/* another key is another job */
	submit_ok(p, "echo", "other", 5, &(ctp_job_opts){ .key = "order-2" }, c);
	assert_string_not_equal(a, c);

	n = node_new(o, "tidem-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);
	wait_ok(p, a, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.output_len, 9);
	assert_memory_equal(info.output, "out:first", 9);
	ctp_job_info_clear(&info);
	wait_end(p, c, CTP_JOB_DONE, 0);

	/* whatever its state: after the end the key still gives the id */
	submit_ok(p, "echo", "again", 5, &jo, d);
	assert_string_equal(a, d);
	rep = rq(r, "KEYS tidem:job:*");
	assert_int_equal(rep->elements, 2);
	freeReplyObject(rep);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 2);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* ---- delays ------------------------------------------------------------- */

/* A delayed job is QUEUED among the delayed jobs, announced on <ns>:wake,
 * and does not start before its delay; one that became due while no node
 * served its kind runs when one does. */
static void test_cluster_delay_does_not_start_early(void **state)
{
	(void)state;
	const int64_t    delay = CTP_MSEC(400);
	ctp_cluster_opts o = opts_for("tdelay");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	redisContext    *sub = sub_open("tdelay:wake");
	struct kctl     *k, *k2;
	struct node     *n, *n2;
	char             id[CTP_JOB_ID_SIZE], id2[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int64_t          t0;

	k = kctl_new(M_ECHO, 5);
	k2 = kctl_new(M_ECHO, 6);
	n = node_new(o, "tdelay-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);

	t0 = tu_now_ns();
	submit_ok(p, "echo", "d", 1, &(ctp_job_opts){ .delay = delay }, id);
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	assert_int_equal(rint_(r, "ZCARD tdelay:delayed:echo"), 1);
	assert_int_equal(sub_next(sub, "tdelay:wake"), 0);

	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 5);
	assert_int_equal(info.attempts, 1);
	ctp_job_info_clear(&info);
	assert_int_equal(atomic_load(&k->runs), 1);
	/* never before the delay (2 ms of slack for Redis's clock, in ms) */
	assert_true(atomic_load(&k->start_ns[0]) - t0 >= delay - CTP_MSEC(2));
	assert_int_equal(rint_(r, "ZCARD tdelay:delayed:echo"), 0);

	/* due while nobody serves "later": runs when a node comes */
	submit_ok(p, "later", "e", 1,
	          &(ctp_job_opts){ .delay = CTP_MSEC(50) }, id2);
	/* wait out the delay (a wait that must time out: the job can't end) */
	assert_int_equal(ctp_cluster_wait(p, id2, CTP_MSEC(150), NULL),
	                 -ETIMEDOUT);
	expect_status(p, id2, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	n2 = node_new(o, "tdelay-n2", 1);
	node_reg(n2, "later", k2);
	node_start(n2);
	wait_end(p, id2, CTP_JOB_DONE, 6);

	node_stop(n);
	node_stop(n2);
	ctp_cluster_close(p);
	redisFree(sub);
	redisFree(r);
	kctl_free(k);
	kctl_free(k2);
}

/* ---- timeouts ----------------------------------------------------------- */

/* The timeout passes while the job waits with no node serving: wait (no
 * node publishes anything) ends it CANCELLED, -ETIMEDOUT; status says the
 * same; cancel is -EALREADY; it never runs when a node later serves (a
 * marker submitted after it, on a 1-thread node, runs alone). */
static void test_cluster_timeout_before_start(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("ttos");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE], m[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	k = kctl_new(M_ECHO, 8);
	submit_ok(p, "echo", "t", 1,
	          &(ctp_job_opts){ .timeout = CTP_MSEC(50) }, id);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_CANCELLED);
	assert_int_equal(info.status, -ETIMEDOUT);
	assert_int_equal(info.attempts, 0);
	ctp_job_info_clear(&info);
	expect_status(p, id, CTP_JOB_CANCELLED, -ETIMEDOUT, 0, "");
	assert_int_equal(ctp_cluster_cancel(p, id), -EALREADY);

	submit_ok(p, "echo", "m", 1, NULL, m);
	n = node_new(o, "ttos-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);
	wait_end(p, m, CTP_JOB_DONE, 8);
	expect_status(p, id, CTP_JOB_CANCELLED, -ETIMEDOUT, 0, "");

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* A delayed job whose timeout is not later than its delay never runs:
 * CANCELLED, -ETIMEDOUT (timeouts count from submission). */
static void test_cluster_timeout_not_after_delay(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("ttnd");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE], m[CTP_JOB_ID_SIZE];

	k = kctl_new(M_ECHO, 9);
	n = node_new(o, "ttnd-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);

	submit_ok(p, "echo", "t", 1, &(ctp_job_opts){ .delay = CTP_MSEC(200),
	          .timeout = CTP_MSEC(100) }, id);
	/* a marker due after it: by its end the first was due long ago */
	submit_ok(p, "echo", "m", 1, &(ctp_job_opts){ .delay = CTP_MSEC(300) },
	          m);
	wait_end(p, id, CTP_JOB_CANCELLED, -ETIMEDOUT);
	wait_end(p, m, CTP_JOB_DONE, 9);
	expect_status(p, id, CTP_JOB_CANCELLED, -ETIMEDOUT, 0, NULL);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* The timeout passes while the job runs: its token fires with -ETIMEDOUT,
 * and it ends DONE with what fn returned. While it runs its record says
 * RUNNING, with its node and attempt 1. */
static void test_cluster_timeout_while_running(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("ttwr");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	k = kctl_new(M_BLOCK, 0);
	n = node_new(o, "ttwr-n1", 1);
	node_reg(n, "block", k);
	node_start(n);

	submit_ok(p, "block", "b", 1,
	          &(ctp_job_opts){ .timeout = CTP_SEC(1) }, id);
	sem_wait_ok(&k->started);
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 1, "ttwr-n1");
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, -ETIMEDOUT);
	assert_int_equal(info.attempts, 1);
	assert_string_equal(info.node, "ttwr-n1");
	ctp_job_info_clear(&info);
	assert_int_equal(atomic_load(&k->reason[0]), -ETIMEDOUT);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* ---- cancel --------------------------------------------------------------- */

/* Cancel of a queued job (and of a delayed one): 0, CANCELLED -ECANCELED,
 * a second cancel -EALREADY, wait returns at once; neither runs when a node
 * starts later (markers submitted after them run alone). */
static void test_cluster_cancel_queued(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tcq");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             a[CTP_JOB_ID_SIZE], d[CTP_JOB_ID_SIZE];
	char             m1[CTP_JOB_ID_SIZE], m2[CTP_JOB_ID_SIZE];
	int64_t          t0;

	k = kctl_new(M_ECHO, 4);
	submit_ok(p, "echo", "a", 1, NULL, a);
	submit_ok(p, "echo", "d", 1, &(ctp_job_opts){ .delay = CTP_MSEC(200) },
	          d);
	assert_int_equal(ctp_cluster_cancel(p, a), 0);
	assert_int_equal(ctp_cluster_cancel(p, d), 0);
	expect_status(p, a, CTP_JOB_CANCELLED, -ECANCELED, 0, "");
	expect_status(p, d, CTP_JOB_CANCELLED, -ECANCELED, 0, "");
	assert_int_equal(ctp_cluster_cancel(p, a), -EALREADY);
	assert_int_equal(ctp_cluster_cancel(p, d), -EALREADY);
	t0 = tu_now_ns();
	wait_end(p, a, CTP_JOB_CANCELLED, -ECANCELED);
	assert_int_equal(ctp_cluster_wait(p, d, CTP_SEC(20), NULL), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(5));

	submit_ok(p, "echo", "m1", 2, NULL, m1);
	submit_ok(p, "echo", "m2", 2,
	          &(ctp_job_opts){ .delay = CTP_MSEC(300) }, m2);
	n = node_new(o, "tcq-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);
	wait_end(p, m1, CTP_JOB_DONE, 4);
	wait_end(p, m2, CTP_JOB_DONE, 4);
	expect_status(p, a, CTP_JOB_CANCELLED, -ECANCELED, 0, "");
	expect_status(p, d, CTP_JOB_CANCELLED, -ECANCELED, 0, "");

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 2);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* Cancel of a running job: -EINPROGRESS, announced on <ns>:cancel, the
 * job's token fires with -ECANCELED on its node, and it ends DONE with what
 * fn returned (-ECANCELED); a second cancel is -EALREADY. */
static void test_cluster_cancel_running(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tcr");
	ctp_cluster     *p = producer(o);
	redisContext    *sub = sub_open("tcr:cancel");
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	k = kctl_new(M_BLOCK, 0);
	n = node_new(o, "tcr-n1", 1);
	node_reg(n, "block", k);
	node_start(n);

	submit_ok(p, "block", "b", 1, NULL, id);
	sem_wait_ok(&k->started);
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 1, "tcr-n1");
	assert_int_equal(ctp_cluster_cancel(p, id), -EINPROGRESS);
	assert_int_equal(sub_next(sub, "tcr:cancel"), 0);
	sem_wait_ok(&k->ended);
	assert_int_equal(atomic_load(&k->reason[0]), -ECANCELED);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, -ECANCELED);
	assert_int_equal(info.attempts, 1);
	assert_string_equal(info.node, "tcr-n1");
	ctp_job_info_clear(&info);
	assert_int_equal(ctp_cluster_cancel(p, id), -EALREADY);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	redisFree(sub);
	kctl_free(k);
}

/* Cancel of a finished job: -EALREADY, and the record is unchanged. */
static void test_cluster_cancel_finished(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tcf");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];

	k = kctl_new(M_SILENT, 12);
	n = node_new(o, "tcf-n1", 1);
	node_reg(n, "s", k);
	node_start(n);
	submit_ok(p, "s", NULL, 0, NULL, id);
	wait_end(p, id, CTP_JOB_DONE, 12);
	assert_int_equal(ctp_cluster_cancel(p, id), -EALREADY);
	expect_status(p, id, CTP_JOB_DONE, 12, 1, "tcf-n1");
	node_stop(n);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* Unknown ids are -ENOENT (wait at once); NULL arguments and bad
 * durations are -EINVAL. */
static void test_cluster_unknown_id_and_null_args(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tunk");
	ctp_cluster     *p = producer(o);
	ctp_job_info     info = { 0 };
	char             id[CTP_JOB_ID_SIZE];
	int64_t          t0;

	assert_int_equal(ctp_cluster_cancel(p, "nosuchjob"), -ENOENT);
	assert_int_equal(ctp_cluster_status(p, "nosuchjob", &info), -ENOENT);
	t0 = tu_now_ns();
	assert_int_equal(ctp_cluster_wait(p, "nosuchjob", CTP_SEC(20), &info),
	                 -ENOENT);
	assert_int_equal(ctp_cluster_wait(p, "1-0", CTP_FOREVER, NULL),
	                 -ENOENT);
	assert_true(tu_now_ns() - t0 < CTP_SEC(5));

	submit_ok(p, "echo", "x", 1, NULL, id);
	assert_int_equal(ctp_cluster_cancel(NULL, id), -EINVAL);
	assert_int_equal(ctp_cluster_cancel(p, NULL), -EINVAL);
	assert_int_equal(ctp_cluster_status(NULL, id, &info), -EINVAL);
	assert_int_equal(ctp_cluster_status(p, NULL, &info), -EINVAL);
	assert_int_equal(ctp_cluster_status(p, id, NULL), -EINVAL);
	assert_int_equal(ctp_cluster_wait(NULL, id, 0, NULL), -EINVAL);
	assert_int_equal(ctp_cluster_wait(p, NULL, 0, NULL), -EINVAL);
	assert_int_equal(ctp_cluster_wait(p, id, CTP_MSEC(-5), NULL), -EINVAL);
	/* timeout 0 does not wait */
	assert_int_equal(ctp_cluster_wait(p, id, 0, NULL), -ETIMEDOUT);
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	ctp_cluster_close(p);
}

/* ---- result_ttl ---------------------------------------------------------- */

/* With result_ttl 100 ms a finished job's record and its key vanish (status
 * -ENOENT, polled every 50 ms for up to 5 s: waiting for expiry, not a
 * timing check); then cancel and wait say -ENOENT and the key is free
 * again. A job that has not ended never expires: a queued one submitted
 * before is still there, with no TTL. */
static void test_cluster_result_ttl_expires(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tttl");
	ctp_cluster     *p;
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             q[CTP_JOB_ID_SIZE], id[CTP_JOB_ID_SIZE];
	char             id2[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int              rc = 0;

	o.result_ttl = CTP_MSEC(100);
	p = producer(o);
	k = kctl_new(M_ECHO, 0);
	submit_ok(p, "nobody", "q", 1, NULL, q);
	n = node_new(o, "tttl-n1", 1);
	node_reg(n, "echo", k);
	node_start(n);

	submit_ok(p, "echo", "x", 1, &(ctp_job_opts){ .key = "ttl-key" }, id);
	wait_end(p, id, CTP_JOB_DONE, 0);
	for (int i = 0; i < 100; i++) {
		memset(&info, 0, sizeof(info));
		rc = ctp_cluster_status(p, id, &info);
		ctp_job_info_clear(&info);
		if (rc == -ENOENT)
			break;
		assert_int_equal(rc, 0);
		nanosleep(&(struct timespec){ 0, 50000000 }, NULL);
	}
	assert_int_equal(rc, -ENOENT);
	assert_int_equal(ctp_cluster_cancel(p, id), -ENOENT);
	assert_int_equal(ctp_cluster_wait(p, id, CTP_SEC(5), NULL), -ENOENT);
	assert_int_equal(rint_(r, "EXISTS tttl:key:ttl-key"), 0);

	/* the unfinished job is still there, with no expiry */
	expect_status(p, q, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	assert_int_equal(rint_(r, "PTTL tttl:job:%s", q), -1);

	/* the key is free again: a new job */
	submit_ok(p, "echo", "y", 1, &(ctp_job_opts){ .key = "ttl-key" }, id2);
	assert_string_not_equal(id, id2);
	wait_end(p, id2, CTP_JOB_DONE, 0);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 2);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* ---- kinds, register, serve ---------------------------------------------- */

/* A job of a kind no node has registered waits (QUEUED, never delivered)
 * while a node serves another kind, and runs once a node registers it. */
static void test_cluster_unregistered_kind_waits(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tunreg");
	ctp_cluster     *p = producer(o);
	struct kctl     *ko, *kl;
	struct node     *a, *b;
	char             l[CTP_JOB_ID_SIZE], m[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	ko = kctl_new(M_ECHO, 1);
	kl = kctl_new(M_ECHO, 2);
	a = node_new(o, "tunreg-a", 2);
	node_reg(a, "other", ko);
	node_start(a);

	submit_ok(p, "later", "l", 1, NULL, l);
	submit_ok(p, "other", "m", 1, NULL, m);
	wait_end(p, m, CTP_JOB_DONE, 1);
	expect_status(p, l, CTP_JOB_QUEUED, ANY_STATUS, 0, "");

	b = node_new(o, "tunreg-b", 1);
	node_reg(b, "later", kl);
	node_start(b);
	wait_ok(p, l, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 2);
	assert_string_equal(info.node, "tunreg-b");
	ctp_job_info_clear(&info);

	node_stop(a);
	node_stop(b);
	assert_int_equal(atomic_load(&ko->runs), 1);
	assert_int_equal(atomic_load(&kl->runs), 1);
	ctp_cluster_close(p);
	kctl_free(ko);
	kctl_free(kl);
}

static int plain_task(void *arg, ctp_token *tok)
{
	(void)arg;
	(void)tok;
	return 77;
}

/* register: -EINVAL (NULL cluster, bad kind, NULL fn, unknown flag),
 * -EEXIST twice; while serve runs: register -EBUSY and a second serve on
 * the same cluster -EBUSY (its pool is left running). */
static void test_cluster_register_errors(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("treg");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             k65[66], k64[65], id[CTP_JOB_ID_SIZE];
	ctp_pool        *pool2 = NULL;
	ctp_token       *stop2 = NULL;
	ctp_task        *t = NULL;
	int              st = -1;

	repeat(k65, 'a', 65);
	repeat(k64, 'b', 64);
	k = kctl_new(M_GATE, 3);
	n = node_new(o, "treg-n1", 1);

	assert_int_equal(ctp_cluster_register(NULL, "k", job_fn, k, 0),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, NULL, job_fn, k, 0),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "", job_fn, k, 0),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, k65, job_fn, k, 0),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "a/b", job_fn, k, 0),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "a b", job_fn, k, 0),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "k", NULL, k, 0), -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "k", job_fn, k, 2u),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "k", job_fn, k, ~0u),
	                 -EINVAL);
	assert_int_equal(ctp_cluster_register(n->c, "k", job_fn, k, 0), 0);
	assert_int_equal(ctp_cluster_register(n->c, "k", job_fn, k, 0),
	                 -EEXIST);
	assert_int_equal(ctp_cluster_register(n->c, "k", iso_fn, NULL,
	                 CTP_JOB_ISOLATED), -EEXIST);
	assert_int_equal(ctp_cluster_register(n->c, k64, job_fn, k, 0), 0);

	node_start(n);
	submit_ok(p, "k", "x", 1, NULL, id);
	sem_wait_ok(&k->started); /* serve runs now */
	assert_int_equal(ctp_cluster_register(n->c, "k2", job_fn, k, 0),
	                 -EBUSY);
	assert_int_equal(ctp_pool_create(&pool2,
	                 &(ctp_pool_opts){ .threads = 1 }), 0);
	assert_int_equal(ctp_token_create(&stop2, NULL), 0);
	assert_int_equal(ctp_cluster_serve(n->c, pool2, stop2), -EBUSY);
	/* nothing done: that pool still runs tasks */
	assert_int_equal(ctp_pool_submit(pool2, plain_task, NULL, NULL, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 77);
	ctp_task_release(t);
	assert_false(ctp_token_cancelled(stop2));
	tu_sem_post(&k->gate);
	wait_end(p, id, CTP_JOB_DONE, 3);

	node_stop(n);
	assert_int_equal(ctp_pool_destroy(pool2), 0);
	ctp_token_release(stop2);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* serve: -EINVAL (NULL arguments, no kind registered), -ENOTSUP (an
 * isolated kind on a pool without worker processes); nothing done: the
 * pool still runs tasks. */
static void test_cluster_serve_errors(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tserr");
	ctp_cluster     *c = NULL;
	ctp_pool        *pool = NULL;
	ctp_token       *stop = NULL;
	ctp_task        *t = NULL;
	int              st = 0;

	o.node = "tserr-n1";
	assert_int_equal(ctp_cluster_connect(&c, &o), 0);
	assert_int_equal(ctp_pool_create(&pool,
	                 &(ctp_pool_opts){ .threads = 1 }), 0);
	assert_int_equal(ctp_token_create(&stop, NULL), 0);

	assert_int_equal(ctp_cluster_serve(NULL, pool, stop), -EINVAL);
	assert_int_equal(ctp_cluster_serve(c, NULL, stop), -EINVAL);
	assert_int_equal(ctp_cluster_serve(c, pool, NULL), -EINVAL);
	assert_int_equal(ctp_cluster_serve(c, pool, stop), -EINVAL);
	assert_int_equal(ctp_cluster_register(c, "iso", iso_fn, NULL,
	                 CTP_JOB_ISOLATED), 0);
	assert_int_equal(ctp_cluster_serve(c, pool, stop), -ENOTSUP);

	assert_int_equal(ctp_pool_submit(pool, plain_task, NULL, NULL, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 77);
	ctp_task_release(t);
	assert_false(ctp_token_cancelled(stop));

	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_token_release(stop);
	ctp_cluster_close(c);
}

/* A stop fired before serve: serve returns 0, starts no job (a queued one
 * stays QUEUED, nothing pending under the node's name), and the pool is
 * shut down on return. */
static void test_cluster_serve_with_stop_already_fired(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tsaf");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n, *n2;
	char             id[CTP_JOB_ID_SIZE];

	k = kctl_new(M_ECHO, 6);
	submit_ok(p, "echo", "x", 1, NULL, id);
	n = node_new(o, "tsaf-n1", 1);
	node_reg(n, "echo", k);
	ctp_token_cancel(n->stop);
	assert_int_equal(ctp_cluster_serve(n->c, n->pool, n->stop), 0);
	assert_int_equal(ctp_pool_submit(n->pool, plain_task, NULL, NULL, NULL),
	                 -ESHUTDOWN);
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	assert_int_equal(pending_of(r, "tsaf", "echo", "tsaf-n1"), 0);
	assert_int_equal(atomic_load(&k->runs), 0);
	node_stop(n);

	/* another node runs it */
	n2 = node_new(o, "tsaf-n2", 1);
	node_reg(n2, "echo", k);
	node_start(n2);
	wait_end(p, id, CTP_JOB_DONE, 6);
	node_stop(n2);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* ---- wait ------------------------------------------------------------------ */

struct waiter {
	ctp_cluster *c;
	const char  *id;
	int          rc;
	ctp_job_info info;
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;

	w->rc = ctp_cluster_wait(w->c, w->id, BOUND, &w->info);
	return NULL;
}

/* wait: -ETIMEDOUT for a job that does not end in time, without polling
 * Redis meanwhile (a 1 s wait costs a handful of commands); a waiter on
 * another thread (sharing the cluster with this one) wakes when the job
 * ends; once ended, a wait returns at once. */
static void test_cluster_wait_timeout_and_wake(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("twait");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	struct waiter    w = { 0 };
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info = { 0 };
	long long        before, after;
	int64_t          t0;
	pthread_t        thr;

	k = kctl_new(M_GATE, 21);
	submit_ok(p, "gate", "g", 1, NULL, id);

	assert_int_equal(ctp_cluster_wait(p, id, CTP_MSEC(100), &info),
	                 -ETIMEDOUT);
	ctp_job_info_clear(&info);

	/* no polling: count the commands Redis ran during a 1 s wait */
	redisReply *rep = rq(r, "CONFIG RESETSTAT");
	freeReplyObject(rep);
	rep = rq(r, "INFO stats");
	before = atoll(strstr(rep->str, "total_commands_processed:") + 25);
	freeReplyObject(rep);
	t0 = tu_now_ns();
	assert_int_equal(ctp_cluster_wait(p, id, CTP_SEC(1), NULL),
	                 -ETIMEDOUT);
	assert_true(tu_now_ns() - t0 >= CTP_MSEC(990));
	rep = rq(r, "INFO stats");
	after = atoll(strstr(rep->str, "total_commands_processed:") + 25);
	freeReplyObject(rep);
	if (after - before > 12) {
		rep = rq(r, "INFO commandstats");
		print_error("commands during a 1 s wait: %lld\n%s\n",
		            after - before, rep->str);
		freeReplyObject(rep);
	}
	assert_true(after - before <= 12);

	n = node_new(o, "twait-n1", 1);
	node_reg(n, "gate", k);
	node_start(n);
	sem_wait_ok(&k->started);
	w.c = p;
	w.id = id;
	thr = tu_spawn(waiter_main, &w);
	/* this thread uses the same cluster meanwhile */
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 1, "twait-n1");
	tu_sem_post(&k->gate);
	tu_join(thr);
	assert_int_equal(w.rc, 0);
	assert_int_equal(w.info.state, CTP_JOB_DONE);
	assert_int_equal(w.info.status, 21);
	ctp_job_info_clear(&w.info);

	t0 = tu_now_ns();
	assert_int_equal(ctp_cluster_wait(p, id, CTP_SEC(20), &info), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(2));
	assert_int_equal(info.state, CTP_JOB_DONE);
	ctp_job_info_clear(&info);
	assert_int_equal(ctp_cluster_wait(p, id, CTP_FOREVER, NULL), 0);

	node_stop(n);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* <ns>:end:<id> is published when a job reaches an end: cancelled while
 * queued, or run to DONE. */
static void test_cluster_end_is_published(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tend");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             a[CTP_JOB_ID_SIZE], b[CTP_JOB_ID_SIZE], ch[96];
	redisContext    *sub;

	k = kctl_new(M_SILENT, 0);
	submit_ok(p, "s", NULL, 0, NULL, a);
	submit_ok(p, "s", NULL, 0, NULL, b);

	snprintf(ch, sizeof(ch), "tend:end:%s", a);
	sub = sub_open(ch);
	assert_int_equal(ctp_cluster_cancel(p, a), 0);
	assert_int_equal(sub_next(sub, ch), 0);
	redisFree(sub);

	snprintf(ch, sizeof(ch), "tend:end:%s", b);
	sub = sub_open(ch);
	n = node_new(o, "tend-n1", 1);
	node_reg(n, "s", k);
	node_start(n);
	assert_int_equal(sub_next(sub, ch), 0);
	redisFree(sub);
	wait_end(p, b, CTP_JOB_DONE, 0);

	node_stop(n);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* ---- several nodes ------------------------------------------------------- */

/* Node A (1 thread) runs a blocking job; a second job goes to idle node B,
 * never to A. */
static void test_cluster_busy_node_leaves_jobs_to_idle(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tbusy");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *a, *b;
	char             j1[CTP_JOB_ID_SIZE], j2[CTP_JOB_ID_SIZE];

	k = kctl_new(M_BLOCK, 0);
	a = node_new(o, "tbusy-a", 1);
	node_reg(a, "block", k);
	node_start(a);
	submit_ok(p, "block", "1", 1, NULL, j1);
	sem_wait_ok(&k->started);
	expect_status(p, j1, CTP_JOB_RUNNING, ANY_STATUS, 1, "tbusy-a");

	b = node_new(o, "tbusy-b", 1);
	node_reg(b, "block", k);
	node_start(b);
	submit_ok(p, "block", "2", 1, NULL, j2);
	sem_wait_ok(&k->started);
	expect_status(p, j2, CTP_JOB_RUNNING, ANY_STATUS, 1, "tbusy-b");

	assert_int_equal(ctp_cluster_cancel(p, j1), -EINPROGRESS);
	assert_int_equal(ctp_cluster_cancel(p, j2), -EINPROGRESS);
	wait_end(p, j1, CTP_JOB_DONE, -ECANCELED);
	wait_end(p, j2, CTP_JOB_DONE, -ECANCELED);
	node_stop(a);
	node_stop(b);
	assert_int_equal(atomic_load(&k->runs), 2);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* One of the library's scripts, run with the namespace and args given. */
static redisReply *eval_(redisContext *r, const char *text, const char *ns,
                         int nargs, const char **args)
{
	const char *argv[16] = { "EVAL", text, "0", ns };
	redisReply *rep;

	assert_true(nargs <= 12);
	for (int i = 0; i < nargs; i++)
		argv[4 + i] = args[i];
	rep = redisCommandArgv(r, 4 + nargs, argv, NULL);
	if (rep == NULL)
		fail_msg("EVAL: %s", r->errstr);
	if (rep->type == REDIS_REPLY_ERROR)
		fail_msg("EVAL: %s", rep->str);
	return rep;
}

/* The entry of job id in its record. */
static void entry_of(redisContext *r, const char *ns, const char *id,
                     char *e, size_t n)
{
	redisReply *rep = rq(r, "HGET %s:job:%s entry", ns, id);

	assert_int_equal(rep->type, REDIS_REPLY_STRING);
	snprintf(e, n, "%s", rep->str);
	freeReplyObject(rep);
}

/* A node that was away (SIGSTOP) past claim_after comes back with a
 * delivery another node has taken over (XAUTOCLAIM): its START and its
 * hand-back of that entry change nothing (before, START ran it a second
 * time and a hand-back dropped the live node's entry). Then a stored cancel
 * is honoured by a hand-back: the job ends CANCELLED instead of going back
 * to the stream. The scripts run here as the nodes' calls would. */
static void test_cluster_stale_node_neither_starts_nor_hands_back(void **s)
{
	(void)s;
	ctp_cluster_opts o = opts_for("tstale");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	redisReply      *rep;
	char             id[CTP_JOB_ID_SIZE], e[48];

	submit_ok(p, "work", "x", 1, NULL, id);
	freeReplyObject(rq(r, "XGROUP CREATE tstale:q:work nodes 0 MKSTREAM"));
	/* node A reads it, is frozen; node B takes the entry over */
	rep = rq(r, "XREADGROUP GROUP nodes A COUNT 1 STREAMS tstale:q:work >");
	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	freeReplyObject(rep);
	entry_of(r, "tstale", id, e, sizeof(e));
	freeReplyObject(rq(r, "XCLAIM tstale:q:work nodes B 0 %s JUSTID", e));
	assert_int_equal(pending_of(r, "tstale", "work", "B"), 1);

	/* A resumes: START and HANDBACK(attempt 0) of the entry it read */
	{
		const char *a[6] = { id, "work", e, "A", "5", "60000" };

		rep = eval_(r, CTP_LUA_START, "tstale", 6, a);
		assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
		assert_int_equal(rep->elements, 1);
		assert_int_equal(rep->element[0]->integer, 0);
		freeReplyObject(rep);
	}
	{
		const char *a[6] = { id, "work", e, "A", "0", "60000" };

		rep = eval_(r, CTP_LUA_HANDBACK, "tstale", 6, a);
		assert_int_equal(rep->integer, 0);
		freeReplyObject(rep);
	}
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 0, "");
	assert_int_equal(pending_of(r, "tstale", "work", "B"), 1);
	assert_int_equal(pending_of(r, "tstale", "work", "A"), 0);
	assert_int_equal(rint_(r, "XLEN tstale:q:work"), 1);

	/* B starts it; a cancel is stored while it runs; B's stop hands it
	 * back: it ends there, cancelled */
	{
		const char *a[6] = { id, "work", e, "B", "5", "60000" };

		rep = eval_(r, CTP_LUA_START, "tstale", 6, a);
		assert_int_equal(rep->elements, 4);
		assert_int_equal(rep->element[0]->integer, 1);
		assert_int_equal(rep->element[1]->integer, 1);
		freeReplyObject(rep);
	}
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 1, "B");
	assert_int_equal(ctp_cluster_cancel(p, id), -EINPROGRESS);
	{
		const char *a[6] = { id, "work", e, "B", "1", "60000" };

		rep = eval_(r, CTP_LUA_HANDBACK, "tstale", 6, a);
		assert_int_equal(rep->integer, 1);
		freeReplyObject(rep);
	}
	expect_status(p, id, CTP_JOB_CANCELLED, -ECANCELED, 1, NULL);
	assert_int_equal(rint_(r, "XLEN tstale:q:work"), 0);
	assert_int_equal(pending_of(r, "tstale", "work", NULL), 0);
	redisFree(r);
	ctp_cluster_close(p);
}

/* CANCEL's answer for one call, as ctp_cluster_cancel's retry would send
 * it (same tag) or another caller (another tag). */
static long long cancel_eval(redisContext *r, const char *ns, const char *id,
                             const char *tag)
{
	const char *a[3] = { id, "60000", tag };
	redisReply *rep = eval_(r, CTP_LUA_CANCEL, ns, 3, a);
	long long   v;

	assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
	v = rep->integer;
	freeReplyObject(rep);
	return v;
}

/* A cancel retried after its reply was lost (ctp_cluster_cancel retries
 * with the same call tag) gets the answer the first try got: 0 for the
 * queued job it cancelled itself, 1 for the running one, also once that
 * one has ended, and so does a second cancel made while it ran (each call
 * keeps its own answer); a cancel made after the end gets 2 (-EALREADY). */
static void test_cluster_cancel_retried_same_answer(void **s)
{
	(void)s;
	ctp_cluster_opts o = opts_for("tcretry");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	redisReply      *rep;
	char             q[CTP_JOB_ID_SIZE], run[CTP_JOB_ID_SIZE], e[48];

	submit_ok(p, "work", "q", 1, NULL, q);
	assert_int_equal(cancel_eval(r, "tcretry", q, "call1"), 0);
	assert_int_equal(cancel_eval(r, "tcretry", q, "call1"), 0);
	assert_int_equal(cancel_eval(r, "tcretry", q, "call2"), 2);
	expect_status(p, q, CTP_JOB_CANCELLED, -ECANCELED, 0, "");

	submit_ok(p, "work", "r", 1, NULL, run);
	freeReplyObject(rq(r, "XGROUP CREATE tcretry:q:work nodes 0 MKSTREAM"));
	rep = rq(r, "XREADGROUP GROUP nodes N COUNT 1 STREAMS tcretry:q:work >");
	freeReplyObject(rep);
	entry_of(r, "tcretry", run, e, sizeof(e));
	{
		const char *a[6] = { run, "work", e, "N", "5", "60000" };

		rep = eval_(r, CTP_LUA_START, "tcretry", 6, a);
		assert_int_equal(rep->element[0]->integer, 1);
		freeReplyObject(rep);
	}
	assert_int_equal(cancel_eval(r, "tcretry", run, "call3"), 1);
	/* a second cancel meanwhile keeps its own answer, not call3's */
	assert_int_equal(cancel_eval(r, "tcretry", run, "call5"), 1);
	assert_int_equal(cancel_eval(r, "tcretry", run, "call3"), 1);
	{
		const char *a[9] = { run, "work", e, "N", "1", "3", "-125", "",
		                     "60000" };

		rep = eval_(r, CTP_LUA_FINISH, "tcretry", 9, a);
		assert_int_equal(rep->integer, 1);
		freeReplyObject(rep);
	}
	assert_int_equal(cancel_eval(r, "tcretry", run, "call3"), 1);
	assert_int_equal(cancel_eval(r, "tcretry", run, "call5"), 1);
	assert_int_equal(cancel_eval(r, "tcretry", run, "call4"), 2);
	expect_status(p, run, CTP_JOB_DONE, -ECANCELED, 1, "N");
	redisFree(r);
	ctp_cluster_close(p);
}

/* A node takes only as many jobs as its pool has free workers: with 2
 * threads and 3 blocking jobs, 2 run and the third is not delivered (QUEUED,
 * attempts 0, 2 pending under the node's name) until one ends. */
static void test_cluster_takes_only_free_workers(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tfree");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             j[3][CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int              queued = -1, running = 0;

	k = kctl_new(M_BLOCK, 0);
	n = node_new(o, "tfree-n1", 2);
	node_reg(n, "block", k);
	node_start(n);
	for (int i = 0; i < 3; i++)
		submit_ok(p, "block", "x", 1, NULL, j[i]);
	sem_wait_ok(&k->started);
	sem_wait_ok(&k->started);
	for (int i = 0; i < 3; i++) {
		status_ok(p, j[i], &info);
		if (info.state == CTP_JOB_QUEUED && info.attempts == 0)
			queued = i;
		else if (info.state == CTP_JOB_RUNNING)
			running++;
		ctp_job_info_clear(&info);
	}
	assert_int_equal(running, 2);
	assert_true(queued >= 0);
	assert_int_equal(pending_of(r, "tfree", "block", "tfree-n1"), 2);
	assert_int_equal(atomic_load(&k->runs), 2);

	/* one ends: the third starts */
	for (int i = 0; i < 3; i++) {
		if (i == queued)
			continue;
		assert_int_equal(ctp_cluster_cancel(p, j[i]), -EINPROGRESS);
		wait_end(p, j[i], CTP_JOB_DONE, -ECANCELED);
		break;
	}
	sem_wait_ok(&k->started);
	expect_status(p, j[queued], CTP_JOB_RUNNING, ANY_STATUS, 1, "tfree-n1");
	for (int i = 0; i < 3; i++) {
		int rc = ctp_cluster_cancel(p, j[i]);

		assert_true(rc == -EINPROGRESS || rc == -EALREADY);
		wait_end(p, j[i], CTP_JOB_DONE, -ECANCELED);
	}
	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 3);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* Graceful stop: with drain 50 ms a job that sleeps on its token sees
 * -ESHUTDOWN; it is handed back (QUEUED, attempts 1, never DONE), nothing
 * stays pending under the stopped node's name, and another node starts it
 * at once (claim_after is 30 s: the bound of 5 s proves it did not wait for
 * it) with attempt 2, to DONE. */
static void test_cluster_graceful_stop_hands_back(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tgs");
	ctp_cluster     *p;
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *a, *b;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int              rc;

	o.claim_after = CTP_SEC(30);
	o.drain = CTP_MSEC(50);
	p = producer(o);
	k = kctl_new(M_BLOCK_FIRST, 7);
	a = node_new(o, "tgs-a", 1);
	node_reg(a, "bf", k);
	node_start(a);
	submit_ok(p, "bf", "x", 1, NULL, id);
	sem_wait_ok(&k->started);
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 1, "tgs-a");

	rc = node_join(a);
	assert_int_equal(rc, 0);
	assert_int_equal(atomic_load(&k->runs), 1);
	assert_int_equal(atomic_load(&k->reason[0]), -ESHUTDOWN);
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 1, NULL);
	assert_int_equal(pending_of(r, "tgs", "bf", "tgs-a"), 0);
	assert_int_equal(pending_of(r, "tgs", "bf", NULL), 0);
	node_stop(a);

	b = node_new(o, "tgs-b", 1);
	node_reg(b, "bf", k);
	node_start(b);
	memset(&info, 0, sizeof(info));
	assert_int_equal(ctp_cluster_wait(p, id, CTP_SEC(5), &info), 0);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 7);
	assert_int_equal(info.attempts, 2);
	assert_string_equal(info.node, "tgs-b");
	ctp_job_info_clear(&info);
	assert_int_equal(atomic_load(&k->runs), 2);
	assert_int_equal(atomic_load(&k->attempt[1]), 2);

	node_stop(b);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* Once stop fired, a node takes no new job (one submitted after it waits
 * for another node), and a running job that ends within drain is recorded
 * DONE (not handed back). */
static void test_cluster_stop_takes_no_new_jobs_and_drains(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tstop");
	ctp_cluster     *p = producer(o);
	struct kctl     *k, *k2;
	struct node     *a, *b;
	char             j1[CTP_JOB_ID_SIZE], j2[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int              rc;

	o.drain = CTP_SEC(5);
	k = kctl_new(M_GATE, 5);
	k2 = kctl_new(M_ECHO, 9);
	a = node_new(o, "tstop-a", 2);
	node_reg(a, "gate", k);
	node_start(a);
	submit_ok(p, "gate", "1", 1, NULL, j1);
	sem_wait_ok(&k->started);

	ctp_token_cancel(a->stop);
	submit_ok(p, "gate", "2", 1, NULL, j2);
	expect_status(p, j1, CTP_JOB_RUNNING, ANY_STATUS, 1, "tstop-a");
	tu_sem_post(&k->gate); /* j1 ends within drain */
	rc = node_join(a);
	assert_int_equal(rc, 0);
	assert_int_equal(atomic_load(&k->runs), 1);
	wait_end(p, j1, CTP_JOB_DONE, 5);
	/* (an XREADGROUP under way when stop fired may have delivered it:
	 * handed back unstarted, that delivery counts as an attempt) */
	expect_status(p, j2, CTP_JOB_QUEUED, ANY_STATUS, ANY_ATTEMPTS, NULL);
	node_stop(a);

	b = node_new(o, "tstop-b", 1);
	node_reg(b, "gate", k2);
	node_start(b);
	wait_ok(p, j2, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 9);
	assert_string_equal(info.node, "tstop-b");
	ctp_job_info_clear(&info);
	node_stop(b);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	kctl_free(k);
	kctl_free(k2);
}

/* CTP_JOB_ISOLATED: a pool with a worker process (made in main() before
 * any thread) runs the kind in that process; payload, attempt and output
 * come back. */
static void test_cluster_isolated_kind(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tiso");
	ctp_cluster     *p = producer(o);
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE], want[64];
	ctp_job_info     info;

	assert_non_null(g_iso_pool);
	n = node_new_pool(o, "tiso-n1", g_iso_pool);
	g_iso_pool = NULL; /* node_stop destroys it */
	assert_int_equal(ctp_cluster_register(n->c, "iso", iso_fn, NULL,
	                 CTP_JOB_ISOLATED), 0);
	assert_int_equal(ctp_cluster_register(n->c, "isowait", iso_wait_fn,
	                 NULL, CTP_JOB_ISOLATED), 0);
	node_start(n);

	submit_ok(p, "iso", "abc", 3, NULL, id);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 17);
	assert_int_equal(info.attempts, 1);
	if (info.output_len <= 10)
		fail_msg("isolated job's output: %zu bytes '%.*s'",
		         info.output_len, (int)info.output_len,
		         info.output ? (char *)info.output : "");
	snprintf(want, sizeof(want), "iso:abc:a1:p");
	assert_memory_equal(info.output, want, strlen(want));
	{
		char pid[16] = "";
		size_t pl = info.output_len - strlen(want);

		assert_true(pl < sizeof(pid));
		memcpy(pid, (char *)info.output + strlen(want), pl);
		assert_int_not_equal(atoi(pid), (int)getpid());
		assert_true(atoi(pid) > 0);
	}
	ctp_job_info_clear(&info);

	/* the stop cuts a running isolated job short (its process is
	 * killed, or its function returns on the token): handed back, the
	 * attempt counted, nothing pending under the node's name */
	submit_ok(p, "isowait", NULL, 0, NULL, id);
	wait_state(p, id, CTP_JOB_RUNNING);
	node_stop(n);
	expect_status(p, id, CTP_JOB_QUEUED, ANY_STATUS, 1, "");
	{
		redisContext *r = rc_open();

		assert_int_equal(pending_of(r, "tiso", "isowait", NULL), 0);
		assert_int_equal(rint_(r, "XLEN tiso:q:isowait"), 1);
		redisFree(r);
	}
	ctp_cluster_close(p);
}

/* An isolated job that waits for its token (in its worker process). */
static int iso_wait_fn(const void *payload, size_t len, unsigned attempt,
                       ctp_output *out, ctp_token *token, void *arg)
{
	(void)payload;
	(void)len;
	(void)attempt;
	(void)out;
	(void)arg;
	return ctp_token_sleep(token, CTP_FOREVER);
}

/* Polls the record (every 10 ms, up to BOUND) until it reads state. The
 * job runs in another process: no semaphore can tell its start. */
static void wait_state(ctp_cluster *c, const char *id, int state)
{
	int64_t tries = BOUND / CTP_MSEC(10);
	ctp_job_info info;

	while (tries-- > 0) {
		status_ok(c, id, &info);
		int st = info.state;

		ctp_job_info_clear(&info);
		if (st == state)
			return;
		nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	}
	fail_msg("job %s never reached state %d", id, state);
}

/* A node with an isolated kind and a thread kind takes an isolated job
 * only while one of its worker processes is free: with its one process
 * busy, a second isolated job stays queued (never taken, attempts 0)
 * while the node goes on taking thread jobs (a later one runs to its end
 * there), and a node with a free process runs it. */
static void test_cluster_isolated_only_with_a_free_process(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tisofree");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *a, *b;
	char             ja[CTP_JOB_ID_SIZE], jb[CTP_JOB_ID_SIZE];
	char             jc[CTP_JOB_ID_SIZE];

	if (UNDER_TSAN) {
		print_message("skipped under TSan (its pools' fork servers "
		              "are made after another pool's thread)\n");
		ctp_cluster_close(p);
		skip();
	}
	k = kctl_new(M_ECHO, 3);
	assert_non_null(g_mix_pool);
	assert_non_null(g_iso2_pool);
	a = node_new_pool(o, "tisofree-a", g_mix_pool);
	g_mix_pool = NULL; /* node_stop destroys it */
	assert_int_equal(ctp_cluster_register(a->c, "iso", iso_wait_fn, NULL,
	                 CTP_JOB_ISOLATED), 0);
	node_reg(a, "echo", k);
	node_start(a);

	submit_ok(p, "iso", NULL, 0, NULL, ja);
	wait_state(p, ja, CTP_JOB_RUNNING);
	submit_ok(p, "iso", NULL, 0, NULL, jb);
	submit_ok(p, "echo", "c", 1, NULL, jc);
	wait_end(p, jc, CTP_JOB_DONE, 3); /* a read after jb's submit */
	expect_status(p, jc, CTP_JOB_DONE, 3, 1, "tisofree-a");
	expect_status(p, jb, CTP_JOB_QUEUED, ANY_STATUS, 0, "");

	b = node_new_pool(o, "tisofree-b", g_iso2_pool);
	g_iso2_pool = NULL;
	assert_int_equal(ctp_cluster_register(b->c, "iso", iso_wait_fn, NULL,
	                 CTP_JOB_ISOLATED), 0);
	node_start(b);
	wait_state(p, jb, CTP_JOB_RUNNING);
	expect_status(p, jb, CTP_JOB_RUNNING, ANY_STATUS, 1, "tisofree-b");
	assert_int_equal(ctp_cluster_cancel(p, jb), -EINPROGRESS);
	assert_int_equal(ctp_cluster_cancel(p, ja), -EINPROGRESS);
	wait_end(p, jb, CTP_JOB_DONE, -ECANCELED);
	wait_end(p, ja, CTP_JOB_DONE, -ECANCELED);
	expect_status(p, ja, CTP_JOB_DONE, -ECANCELED, 1, "tisofree-a");
	node_stop(a);
	node_stop(b);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* Output past CTP_JOB_MAX_PAYLOAD is cut: the write past it answers
 * -EMSGSIZE and the job's output is exactly the first 64 MiB. */
static void test_cluster_output_cut_at_max(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tout");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	uint32_t         s = 99;

	g_big_chunk = malloc(BIG_CHUNK);
	assert_non_null(g_big_chunk);
	for (size_t i = 0; i < BIG_CHUNK; i++)
		g_big_chunk[i] = (unsigned char)tu_rng_next(&s);
	k = kctl_new(M_BIG, 0);
	n = node_new(o, "tout-n1", 1);
	node_reg(n, "big", k);
	node_start(n);

	submit_ok(p, "big", NULL, 0, NULL, id);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 0); /* every write within the limit: 0 */
	assert_int_equal(atomic_load(&k->wrc[0]), -EMSGSIZE);
	assert_int_equal(info.output_len, CTP_JOB_MAX_PAYLOAD);
	for (size_t off = 0; off < CTP_JOB_MAX_PAYLOAD; off += BIG_CHUNK)
		if (memcmp((char *)info.output + off, g_big_chunk, BIG_CHUNK))
			fail_msg("output differs in the chunk at %zu", off);
	ctp_job_info_clear(&info);

	node_stop(n);
	ctp_cluster_close(p);
	kctl_free(k);
	free(g_big_chunk);
	g_big_chunk = NULL;
}

/* ---- reconnects ---------------------------------------------------------- */

/* Drops every client connection of Redis but this test's own. */
static void kill_clients(redisContext *r)
{
	redisReply *rep = rq(r, "CLIENT KILL TYPE normal SKIPME yes");

	freeReplyObject(rep);
	rep = rq(r, "CLIENT KILL TYPE pubsub SKIPME yes");
	freeReplyObject(rep);
}

/* Connections dropped under a node and a producer while a job runs
 * (Redis gone for an instant, from their side): the job goes on, its
 * result is written once the node is back (DONE, attempt 1: not run
 * again), and the node takes jobs again. */
static void test_cluster_result_written_after_reconnect(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("trecon");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             j1[CTP_JOB_ID_SIZE], j2[CTP_JOB_ID_SIZE];
	ctp_job_info     info;

	k = kctl_new(M_GATE, 31);
	n = node_new(o, "trecon-n1", 2);
	node_reg(n, "gate", k);
	node_start(n);

	submit_ok(p, "gate", "g", 1, NULL, j1);
	sem_wait_ok(&k->started);
	kill_clients(r);
	tu_sem_post(&k->gate);
	sem_wait_ok(&k->ended);
	wait_ok(p, j1, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 31);
	assert_int_equal(info.attempts, 1);
	ctp_job_info_clear(&info);

	/* it takes jobs again */
	tu_sem_post(&k->gate);
	submit_ok(p, "gate", "h", 1, NULL, j2);
	wait_end(p, j2, CTP_JOB_DONE, 31);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 2);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* A cancel made right after a node's connections dropped (its
 * subscription may miss the announcement) still fires the running job's
 * token once the node is back. */
static void test_cluster_cancel_while_node_reconnects(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tcrec");
	ctp_cluster     *p = producer(o);
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];

	k = kctl_new(M_BLOCK, 0);
	n = node_new(o, "tcrec-n1", 1);
	node_reg(n, "block", k);
	node_start(n);

	submit_ok(p, "block", "b", 1, NULL, id);
	sem_wait_ok(&k->started);
	kill_clients(r);
	assert_int_equal(ctp_cluster_cancel(p, id), -EINPROGRESS);
	wait_end(p, id, CTP_JOB_DONE, -ECANCELED);
	assert_int_equal(atomic_load(&k->reason[0]), -ECANCELED);

	node_stop(n);
	assert_int_equal(atomic_load(&k->runs), 1);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* ---- nodes that die: forked children killed with SIGKILL ------------------- */

static int g_victim_fd = -1;

static int victim_fn(const void *payload, size_t len, unsigned attempt,
                     ctp_output *out, ctp_token *token, void *arg)
{
	unsigned char a = (unsigned char)attempt;

	(void)payload;
	(void)len;
	(void)out;
	(void)arg;
	if (write(g_victim_fd, &a, 1) != 1)
		_exit(5);
	return ctp_token_sleep(token, CTP_FOREVER);
}

/* Forks a node process named name serving kind with victim_fn (claim_after
 * 100 ms, max_deliveries md); each run writes its attempt to *rfd. */
static pid_t victim_spawn(const char *ns, const char *name, const char *kind,
                          unsigned md, int *rfd)
{
	int   fds[2];
	pid_t parent = getpid(), pid;

	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		ctp_cluster_opts o = opts_for(ns);
		ctp_cluster     *c = NULL;
		ctp_pool        *pool = NULL;
		ctp_token       *stop = NULL;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(3);
		close(fds[0]);
		g_victim_fd = fds[1];
		o.node = name;
		o.claim_after = CTP_MSEC(100);
		o.max_deliveries = md;
		if (ctp_cluster_connect(&c, &o) != 0 ||
		    ctp_cluster_register(c, kind, victim_fn, NULL, 0) != 0 ||
		    ctp_pool_create(&pool, &(ctp_pool_opts){ .threads = 1 })
		    != 0 || ctp_token_create(&stop, NULL) != 0)
			_exit(4);
		ctp_cluster_serve(c, pool, stop);
		_exit(6);
	}
	close(fds[1]);
	*rfd = fds[0];
	return pid;
}

/* The next byte from fd within bound, or -1. */
static int read_byte(int fd, int64_t bound)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	unsigned char b;

	if (poll(&pf, 1, (int)(bound / 1000000)) != 1)
		return -1;
	if (read(fd, &b, 1) != 1)
		return -1;
	return b;
}

static void victim_kill(pid_t pid, int fd)
{
	kill(pid, SIGKILL);
	assert_true(tu_reap(pid, BOUND) != -1);
	close(fd);
}

/* A node killed mid-job loses nothing: once its heartbeats have been
 * missing for claim_after (100 ms) another node runs the job again, told it
 * is attempt 2. */
static void test_cluster_killed_node_job_runs_again(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tkill");
	ctp_cluster     *p;
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int              fd;
	pid_t            pid;

	o.claim_after = CTP_MSEC(100);
	p = producer(o);
	k = kctl_new(M_SILENT, 13);
	submit_ok(p, "work", "w", 1, NULL, id);
	pid = victim_spawn("tkill", "tkill-victim", "work", 0, &fd);
	assert_int_equal(read_byte(fd, BOUND), 1);
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 1, "tkill-victim");
	victim_kill(pid, fd);

	n = node_new(o, "tkill-n2", 1);
	node_reg(n, "work", k);
	node_start(n);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DONE);
	assert_int_equal(info.status, 13);
	assert_int_equal(info.attempts, 2);
	assert_string_equal(info.node, "tkill-n2");
	ctp_job_info_clear(&info);
	assert_int_equal(atomic_load(&k->runs), 1);
	assert_int_equal(atomic_load(&k->attempt[0]), 2);

	node_stop(n);
	ctp_cluster_close(p);
	kctl_free(k);
}

/* Dead letter: with max_deliveries 2, two nodes (forked children) die
 * running the job; the next node does not run it: it ends DEAD,
 * -EOWNERDEAD, attempts 2, and <ns>:dead holds its id and kind. Cancel of
 * it is -EALREADY. */
static void test_cluster_dead_letter(void **state)
{
	(void)state;
	ctp_cluster_opts o = opts_for("tdead");
	ctp_cluster     *p;
	redisContext    *r = rc_open();
	struct kctl     *k;
	struct node     *n;
	char             id[CTP_JOB_ID_SIZE];
	ctp_job_info     info;
	int              fd;
	pid_t            pid;
	redisReply      *rep;
	bool             has_id = false, has_kind = false;

	o.claim_after = CTP_MSEC(100);
	o.max_deliveries = 2;
	p = producer(o);
	k = kctl_new(M_SILENT, 0);
	submit_ok(p, "work", "w", 1, NULL, id);

	pid = victim_spawn("tdead", "tdead-v1", "work", 2, &fd);
	assert_int_equal(read_byte(fd, BOUND), 1);
	victim_kill(pid, fd);
	pid = victim_spawn("tdead", "tdead-v2", "work", 2, &fd);
	assert_int_equal(read_byte(fd, BOUND), 2);
	expect_status(p, id, CTP_JOB_RUNNING, ANY_STATUS, 2, "tdead-v2");
	victim_kill(pid, fd);

	n = node_new(o, "tdead-n3", 1);
	node_reg(n, "work", k);
	node_start(n);
	wait_ok(p, id, &info);
	assert_int_equal(info.state, CTP_JOB_DEAD);
	assert_int_equal(info.status, -EOWNERDEAD);
	assert_int_equal(info.attempts, 2);
	ctp_job_info_clear(&info);
	assert_int_equal(atomic_load(&k->runs), 0);
	assert_int_equal(ctp_cluster_cancel(p, id), -EALREADY);

	rep = rq(r, "XRANGE tdead:dead - +");
	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	assert_int_equal(rep->elements, 1);
	redisReply *fields = rep->element[0]->element[1];
	for (size_t i = 0; i < fields->elements; i++) {
		if (fields->element[i]->type != REDIS_REPLY_STRING)
			continue;
		has_id |= strcmp(fields->element[i]->str, id) == 0;
		has_kind |= strcmp(fields->element[i]->str, "work") == 0;
	}
	freeReplyObject(rep);
	assert_true(has_id);
	assert_true(has_kind);
	assert_int_equal(pending_of(r, "tdead", "work", NULL), 0);

	node_stop(n);
	ctp_cluster_close(p);
	redisFree(r);
	kctl_free(k);
}

/* ---- many jobs ------------------------------------------------------------ */

enum { PRODUCERS = 4, PER_PRODUCER = 25 };

struct prod_arg {
	ctp_cluster *c;
	int          first;
	char       (*ids)[CTP_JOB_ID_SIZE];
	atomic_int  *fails;
};

static void *prod_main(void *arg)
{
	struct prod_arg *a = arg;

	for (int i = 0; i < PER_PRODUCER; i++) {
		uint32_t idx = (uint32_t)(a->first + i);

		if (ctp_cluster_submit(a->c, "count", &idx, sizeof(idx), NULL,
		                       a->ids[idx]) != 0)
			atomic_fetch_add(a->fails, 1);
	}
	return NULL;
}

/* 100 jobs submitted from 4 threads sharing one cluster, run by 2 nodes of
 * 2 threads: distinct ids, each job DONE exactly once with its status. */
static void test_cluster_many_jobs_each_run_once(void **state)
{
	(void)state;
	enum { N = PRODUCERS * PER_PRODUCER };
	ctp_cluster_opts o = opts_for("tmany");
	ctp_cluster     *p = producer(o);
	struct kctl     *k;
	struct node     *a, *b;
	static char      ids[N][CTP_JOB_ID_SIZE];
	struct prod_arg  pa[PRODUCERS];
	pthread_t        thr[PRODUCERS];
	atomic_int       fails = 0;

	k = kctl_new(M_COUNT, 0);
	a = node_new(o, "tmany-a", 2);
	node_reg(a, "count", k);
	node_start(a);
	b = node_new(o, "tmany-b", 2);
	node_reg(b, "count", k);
	node_start(b);

	for (int i = 0; i < PRODUCERS; i++) {
		pa[i] = (struct prod_arg){ p, i * PER_PRODUCER, ids, &fails };
		thr[i] = tu_spawn(prod_main, &pa[i]);
	}
	for (int i = 0; i < PRODUCERS; i++)
		tu_join(thr[i]);
	assert_int_equal(atomic_load(&fails), 0);
	for (int i = 0; i < N; i++)
		for (int j = i + 1; j < N; j++)
			assert_string_not_equal(ids[i], ids[j]);
	for (int i = 0; i < N; i++)
		wait_end(p, ids[i], CTP_JOB_DONE, i);

	node_stop(a);
	node_stop(b);
	assert_int_equal(atomic_load(&k->runs), N);
	assert_int_equal(atomic_load(&k->bad), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(atomic_load(&k->per[i]), 1);
	ctp_cluster_close(p);
	kctl_free(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_cluster_submit_runs_to_done, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_payload_empty, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_payload_1mib, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_same_entry_id_in_two_kinds,
		                          teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_submit_rejects_bad_input, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_connect_rejects_bad_options, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_connect_unreachable, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_url_selects_db, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_default_ns_and_node, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_idempotency_key, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_delay_does_not_start_early, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_timeout_before_start, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_timeout_not_after_delay, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_timeout_while_running, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_cancel_queued, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_cancel_running, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_cancel_finished, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_unknown_id_and_null_args, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_result_ttl_expires, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_unregistered_kind_waits, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_register_errors, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_serve_errors, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_serve_with_stop_already_fired, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_wait_timeout_and_wake, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_end_is_published, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_busy_node_leaves_jobs_to_idle, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_takes_only_free_workers, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_stale_node_neither_starts_nor_hands_back,
		                          teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_cancel_retried_same_answer,
		                          teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_graceful_stop_hands_back, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_stop_takes_no_new_jobs_and_drains, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_isolated_kind, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_isolated_only_with_a_free_process,
		                          teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_output_cut_at_max, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_result_written_after_reconnect,
		                          teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_cancel_while_node_reconnects,
		                          teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_killed_node_job_runs_again, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_dead_letter, teardown_nodes),
		cmocka_unit_test_teardown(test_cluster_many_jobs_each_run_once, teardown_nodes),
	};
	int rc;

	g_url = getenv("CTP_REDIS_URL");
	if (g_url == NULL || *g_url == '\0') {
		printf("test_cluster: CTP_REDIS_URL is not set (run it through "
		       "tests/redis/with_redis.sh): skipped\n");
		return 77;
	}
	if (sscanf(g_url, "redis://%63[^:]:%d", g_host, &g_port) != 2) {
		fprintf(stderr, "test_cluster: cannot parse CTP_REDIS_URL %s\n",
		        g_url);
		return 1;
	}
	/* The isolated pool's worker processes are copies of the program as
	 * it is now: made before any thread of the tests exists. */
	if (ctp_pool_create(&g_iso_pool, &(ctp_pool_opts){ .threads = 1,
	                    .processes = 1, .name = "iso" }) != 0) {
		fprintf(stderr, "test_cluster: cannot create the isolated "
		        "pool\n");
		return 1;
	}
	/* These two fork their servers while g_iso_pool's thread runs:
	 * TSan kills a process that starts a thread after a fork of a
	 * multi-threaded program, so under TSan the case that needs them
	 * is skipped (plain and ASan run it). */
	if (!UNDER_TSAN &&
	    (ctp_pool_create(&g_mix_pool, &(ctp_pool_opts){ .threads = 2,
	                    .processes = 1, .name = "mix" }) != 0 ||
	    ctp_pool_create(&g_iso2_pool, &(ctp_pool_opts){ .threads = 1,
	                    .processes = 1, .name = "iso2" }) != 0)) {
		fprintf(stderr, "test_cluster: cannot create the isolated "
		        "pools\n");
		return 1;
	}
	/* CTP_TEST_FILTER: run only the cases whose name matches (a glob) */
	if (getenv("CTP_TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("CTP_TEST_FILTER"));
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	if (g_iso_pool != NULL)
		ctp_pool_destroy(g_iso_pool);
	if (g_mix_pool != NULL)
		ctp_pool_destroy(g_mix_pool);
	if (g_iso2_pool != NULL)
		ctp_pool_destroy(g_iso2_pool);
	return rc;
}
