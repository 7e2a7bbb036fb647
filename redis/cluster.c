/*
 * libctpool-redis: jobs on Redis Streams (DISTRIBUTED.md, ctpool-redis.h).
 *
 * Design notes
 *
 * Storage (scripts.h has the record's fields and the fence): a job is a
 * hash <ns>:job:<id> plus, while it may start, one entry in the stream of
 * its kind <ns>:q:<kind>, read by the consumer group "nodes" where each
 * node is a consumer of its own name. Every change of a job is one Lua
 * script, so a job is never half-stored and two nodes never both start one
 * delivery. A job's id is 24 random hex digits made by the submitter, so a
 * submit retried after a lost reply finds its own record and stores
 * nothing twice.
 *
 * A job's trip: SUBMIT (record + entry, or the delayed set) -> a node's
 * XREADGROUP (or XAUTOCLAIM of a dead node's entry) -> START (attempts + 1,
 * state running; only while the entry is still the job's and still pending
 * under this node, so a node that was away cannot start a delivery another
 * node took over) -> the pool runs it -> its done callback
 * queues it for the serve loop -> FINISH (record DONE, entry acknowledged
 * and deleted; fenced by attempt, node and entry) or HANDBACK (a new entry
 * at once: the stop, a run cut short).
 *
 * Liveness: a node's pending entries are its claims. HEARTBEAT resets
 * their idle time every claim_after / 4 (XCLAIM to itself, JUSTID), and
 * every node runs XAUTOCLAIM with min-idle claim_after, so an entry whose
 * node stopped sending heartbeats is taken over within claim_after plus one
 * reclaim period (claim_after / 4, at most 1 s). The new START moves
 * attempts on, which fences the old node out: its FINISH, HANDBACK and
 * HEARTBEAT change nothing, and its heartbeat's answer (lost) fires the
 * job's token there. After a reconnect a node sends its heartbeats at once
 * but reclaims only claim_after later: while Redis was away nobody's
 * heartbeats reached it, so every entry looks idle.
 *
 * The stop: a thread job's run is decided once (struct job's `run`, a CAS
 * by the worker when fn returns, or by the loop when it claims the job,
 * just before the pool's shutdown fires the tokens): a run that returned
 * before the claim is recorded as it ended; one still going at the claim
 * is handed back and its later end is not written, even if fn returns 0
 * before the fire reaches it; a job claimed before a worker started it
 * does not run here.
 *
 * Cancel: CANCEL ends a queued job in the record (its entry is deleted;
 * START drops an entry of an ended job) or, for a running job, stores
 * cancel=1 and then publishes the id on <ns>:cancel. Every serving node
 * subscribes to that channel and fires the token of its own job; a node
 * that missed the message (away, reconnecting) learns it from its next
 * heartbeat, whose answer says "cancel stored"; START refuses a job whose
 * cancel is stored.
 *
 * Threads. A cluster has one command connection (cmd) shared under
 * cmd_lock by every caller of submit/cancel/status/wait. ctp_cluster_serve
 * runs a single-threaded loop on its caller's thread with three
 * connections of its own: rd (XREADGROUP ... BLOCK, sent and then read
 * when poll() says so), nc (the node's scripts) and sub (the subscription
 * to <ns>:cancel and <ns>:wake), and polls them with an eventfd the done
 * callbacks write and the stop token's fd. Jobs run on the pool's workers;
 * their done callbacks only push the job on the done list (under
 * done_lock) and write the eventfd: every Redis write about a job is made
 * by the serve loop. When a connection fails the loop drops all three and
 * reconnects with backoff (10 ms doubling to 1 s); jobs keep running, and
 * their ends wait in the done list until Redis is back. After each
 * (re)connect the loop first reads its own pending entries (XREADGROUP from
 * id 0): deliveries it has not started are started then.
 *
 * Fields: struct ctp_cluster's options, kinds and scripts' sha1 are
 * immutable once serve runs; cmd under cmd_lock; done_head under
 * done_lock; everything of struct srv (the serve loop's state) belongs to
 * the serve thread alone, and a struct job's fields are the serve
 * thread's except ran/cut (written by the worker before done, read after
 * done through done_lock) and status/done_next (done_lock).
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "ctpool-redis.h"
#include "scripts.h"

_Static_assert(ECANCELED == 125 && ETIMEDOUT == 110 && EOWNERDEAD == 130,
               "the scripts write Linux's errno values");

#define GROUP          "nodes"
#define MAX_NAME       64
#define MAX_KEY        256
#define MAX_KINDS      64     /* kinds one cluster may register */
#define DEF_CLAIM      CTP_SEC(30)
#define DEF_TTL        (CTP_SEC(86400))
#define DEF_DRAIN      CTP_SEC(10)
#define DEF_MAXD       5u
#define CONNECT_TMO_MS 2000
#define CMD_TMO_MS     10000
#define BACKOFF_MIN_MS 10
#define BACKOFF_MAX_MS 1000
#define READ_BLOCK_MS  1000
#define RECONNECT_TRIES 12    /* at the stop: 10 ms doubling, about 6 s */

enum { S_SUBMIT, S_STATUS, S_CANCEL, S_START, S_FINISH, S_HANDBACK,
       S_HEARTBEAT, S_PROMOTE, S_COUNT };

static const char *const script_text[S_COUNT] = {
	CTP_LUA_SUBMIT, CTP_LUA_STATUS, CTP_LUA_CANCEL, CTP_LUA_START,
	CTP_LUA_FINISH, CTP_LUA_HANDBACK, CTP_LUA_HEARTBEAT, CTP_LUA_PROMOTE,
};

struct kind {
	struct kind *next;
	char         name[MAX_NAME + 1];
	ctp_job_fn   fn;
	void        *arg;
	unsigned     flags;
	char         cursor[48];  /* serve thread: XAUTOCLAIM's next start */
};

struct endpoint {
	char host[256];           /* or a unix socket's path */
	int  port;                /* 0 = unix socket */
	int  db;
};

struct ctp_cluster {
	struct endpoint ep;
	char         ns[MAX_NAME + 1];
	char         node[MAX_NAME];
	int64_t      claim_after, result_ttl, drain;
	unsigned     max_deliveries;
	struct kind *kinds;       /* immutable while serve runs */
	atomic_bool  serving;
	pthread_mutex_t cmd_lock;
	redisContext   *cmd;      /* cmd_lock; NULL while disconnected */
};

/* One delivery this node took. */
struct job {
	struct job      *next;      /* serve thread: the in-flight list */
	struct job      *done_next; /* done_lock */
	struct srv      *srv;
	struct kind     *kind;
	char             id[CTP_JOB_ID_SIZE];
	char             entry[48];
	unsigned         attempt;
	void            *payload;   /* thread jobs' copy; NULL when len 0 */
	size_t           len;
	ctp_output      *out;       /* thread jobs */
	ctp_task        *task;
	int              status;    /* done_lock */
	bool             ran;       /* worker, before done; read after done */
	atomic_int       run;       /* RUN_*: who ends a thread job's run */
	/* the serve thread's own, kept apart from the fields other threads
	 * write (a load of two of them may be made as one wider load) */
	bool             handed;    /* serve: handed back already */
	bool             finished;  /* serve: done seen */
	bool             cancel_sent; /* serve: its token was fired by us */
};

/* A thread job's run, decided once by a CAS from RUN_ON: its function
 * returned (the worker: its end is written from its done), or the stop
 * claimed it to hand it back (the serve loop, before the pool's shutdown
 * fires the tokens: whatever it returns later is not written). So a run
 * that returned before the claim is never handed back (also one that
 * returned just before the fire's reason could reach it), one handed back
 * is never also finished, and one claimed before it started does not
 * start. A run still going at the claim is handed back even if it returns
 * 0 before the fire: a job runs at least once, not exactly once. */
enum { RUN_ON, RUN_RETURNED, RUN_HANDED };

struct srv {
	ctp_cluster    *c;
	ctp_pool       *pool;
	ctp_token      *stop;
	redisContext   *rd, *nc, *sub;
	bool            reading;    /* an XREADGROUP is outstanding on rd */
	unsigned        read_n;     /* its COUNT */
	bool            down;       /* connections dropped; retry at retry_at */
	int64_t         retry_at, backoff;
	int             efd, stopfd;
	struct job     *jobs;       /* in flight: started or being started */
	unsigned        njobs;
	pthread_mutex_t done_lock;
	struct job     *done_head;  /* done_lock */
	struct job     *unwritten;  /* ended, their write failed: retried */
	int64_t         next_beat, next_claim, next_promote;
	bool            stopping;
	unsigned        processes;  /* pool's worker processes at the start */
	unsigned        iso_inflight;
	unsigned long   nhanded;    /* hand-backs Redis took */
	unsigned        budget;     /* deliveries this read may start
	                               (UINT_MAX: any) */
};

/* ---- small helpers -------------------------------------------------- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * CTP_SEC(1) + ts.tv_nsec;
}

static bool name_ok(const char *s, size_t max)
{
	size_t n;

	if (s == NULL || *s == '\0')
		return false;
	for (n = 0; s[n]; n++) {
		unsigned char ch = (unsigned char)s[n];

		if (n >= max || !(isalnum(ch) || ch == '_' || ch == '.' ||
		                  ch == '-'))
			return false;
	}
	return true;
}

/* ns -> ms, rounded up (a 1 ns delay still waits 1 ms). */
static long long ms_up(int64_t ns)
{
	return (long long)(ns / CTP_MSEC(1) + (ns % CTP_MSEC(1) != 0));
}

static int parse_url(const char *url, struct endpoint *ep)
{
	const char *p;
	char *end;
	long v;
	size_t n;

	memset(ep, 0, sizeof(*ep));
	if (url == NULL)
		url = "redis://127.0.0.1:6379";
	if (strncmp(url, "unix:", 5) == 0) {
		p = url + 5;
		if (*p == '\0' || strlen(p) >= sizeof(ep->host))
			return -EINVAL;
		strcpy(ep->host, p);
		return 0;
	}
	if (strncmp(url, "redis://", 8) != 0)
		return -EINVAL;
	p = url + 8;
	n = strcspn(p, ":/");
	if (n == 0 || n >= sizeof(ep->host))
		return -EINVAL;
	memcpy(ep->host, p, n);
	p += n;
	ep->port = 6379;
	if (*p == ':') {
		p++;
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		errno = 0;
		v = strtol(p, &end, 10);
		if (errno || v < 1 || v > 65535)
			return -EINVAL;
		ep->port = (int)v;
		p = end;
	}
	if (*p == '/') {
		p++;
		if (*p != '\0') {
			if (!isdigit((unsigned char)*p))
				return -EINVAL;
			errno = 0;
			v = strtol(p, &end, 10);
			if (errno || v < 0 || v > INT_MAX || *end != '\0')
				return -EINVAL;
			ep->db = (int)v;
			p = end;
		}
	}
	return *p == '\0' ? 0 : -EINVAL;
}

static void conn_free(redisContext **ctx)
{
	if (*ctx != NULL)
		redisFree(*ctx);
	*ctx = NULL;
}

/* An error reply that means "not now" (a restarted Redis replaying its
 * AOF, a script running too long): the command did not run; the caller
 * treats it as a failed connection, reconnects with backoff and retries. */
static bool transient(const char *msg)
{
	return strncmp(msg, "LOADING", 7) == 0 || strncmp(msg, "BUSY ", 5) == 0 ||
	       strncmp(msg, "MASTERDOWN", 10) == 0 ||
	       strncmp(msg, "TRYAGAIN", 8) == 0;
}

/* A reply that is not an error, or NULL (then *err says why: -EIO when the
 * connection failed, which the caller must drop; -EPROTO for a Redis
 * error reply). */
static redisReply *cmd_argv(redisContext *ctx, int argc, const char **argv,
                            const size_t *len, int *err)
{
	redisReply *r = redisCommandArgv(ctx, argc, argv, len);

	*err = 0;
	if (r == NULL) {
		*err = -EIO;
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		*err = strncmp(r->str, "OOM", 3) == 0 ? -ENOMEM
		     : transient(r->str) ? -EIO : -EPROTO;
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

static redisReply *cmd_fmt(redisContext *ctx, int *err, const char *fmt, ...)
{
	va_list ap;
	redisReply *r;

	va_start(ap, fmt);
	r = redisvCommand(ctx, fmt, ap);
	va_end(ap);
	*err = 0;
	if (r == NULL) {
		*err = -EIO;
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		*err = transient(r->str) ? -EIO : -EPROTO;
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/* Connects, selects the db, checks the server's version (6.2 or later:
 * XAUTOCLAIM). -ECONNREFUSED, -EPROTO, -ENOMEM. */
static int conn_open(const struct endpoint *ep, redisContext **out)
{
	struct timeval tv = { CONNECT_TMO_MS / 1000,
	                      (CONNECT_TMO_MS % 1000) * 1000 };
	struct timeval ctv = { CMD_TMO_MS / 1000, 0 };
	redisContext *ctx;
	redisReply *r;
	int err, maj = 0, min = 0;
	const char *v;

	ctx = ep->port ? redisConnectWithTimeout(ep->host, ep->port, tv)
	               : redisConnectUnixWithTimeout(ep->host, tv);
	if (ctx == NULL)
		return -ENOMEM;
	if (ctx->err) {
		redisFree(ctx);
		return -ECONNREFUSED;
	}
	redisSetTimeout(ctx, ctv);
	redisEnableKeepAlive(ctx);
	if (ep->db) {
		r = cmd_fmt(ctx, &err, "SELECT %d", ep->db);
		if (r == NULL) {
			redisFree(ctx);
			return err == -EIO ? -ECONNREFUSED : -EINVAL;
		}
		freeReplyObject(r);
	}
	r = cmd_fmt(ctx, &err, "INFO server");
	if (r == NULL || r->type != REDIS_REPLY_STRING) {
		if (r)
			freeReplyObject(r);
		redisFree(ctx);
		return err == -EIO ? -ECONNREFUSED : -EPROTO;
	}
	v = strstr(r->str, "redis_version:");
	if (v == NULL || sscanf(v + 14, "%d.%d", &maj, &min) != 2 ||
	    maj < 6 || (maj == 6 && min < 2)) {
		freeReplyObject(r);
		redisFree(ctx);
		return -EPROTO;
	}
	freeReplyObject(r);
	*out = ctx;
	return 0;
}

/* Runs script s with args (ARGV after the namespace, which comes first).
 * EVAL with the text: Redis keeps the compiled script by its sha1, so the
 * text is the only cost, and no NOSCRIPT after a restart can happen. */
static redisReply *script(ctp_cluster *c, redisContext *ctx, int s, int nargs,
                          const char **args, const size_t *lens, int *err)
{
	const char *argv[3 + 1 + 48];
	size_t len[3 + 1 + 48];
	int i, n = 0;

	if (nargs > 48) {
		*err = -EINVAL;
		return NULL;
	}
	argv[n] = "EVAL";
	len[n++] = 4;
	argv[n] = script_text[s];
	len[n++] = strlen(script_text[s]);
	argv[n] = "0";
	len[n++] = 1;
	argv[n] = c->ns;
	len[n++] = strlen(c->ns);
	for (i = 0; i < nargs; i++) {
		argv[n] = args[i];
		len[n++] = lens ? lens[i] : strlen(args[i]);
	}
	return cmd_argv(ctx, n, argv, len, err);
}

/* Heartbeats carry many jobs: a variable argv. */
static redisReply *script_v(ctp_cluster *c, redisContext *ctx, int s,
                            int nargs, const char **args, int *err)
{
	const char **argv = malloc(sizeof(*argv) * (size_t)(nargs + 4));
	size_t *len = malloc(sizeof(*len) * (size_t)(nargs + 4));
	redisReply *r = NULL;
	int i, n = 0;

	*err = -ENOMEM;
	if (argv && len) {
		argv[n] = "EVAL";
		len[n++] = 4;
		argv[n] = script_text[s];
		len[n++] = strlen(script_text[s]);
		argv[n] = "0";
		len[n++] = 1;
		argv[n] = c->ns;
		len[n++] = strlen(c->ns);
		for (i = 0; i < nargs; i++) {
			argv[n] = args[i];
			len[n++] = strlen(args[i]);
		}
		r = cmd_argv(ctx, n, argv, len, err);
	}
	free(argv);
	free(len);
	return r;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Under cmd_lock: runs script s on the shared connection, reconnecting with
 * backoff (5 retries: 10, 100, 500, 1000, 2000 ms, about 3.6 s in all, as
 * long as a Redis restart with a small AOF takes) when the connection fails
 * or Redis answers "not now". Every script is safe to run again after a
 * lost reply (SUBMIT by its id; the others change nothing the second time
 * or answer what they found). *err on failure: -ECONNREFUSED when no try
 * reached Redis (nothing ran), -EIO when one may have run and its reply
 * was lost, or the error reply's code. */
static redisReply *cmd_script(ctp_cluster *c, int s, int nargs,
                              const char **args, const size_t *lens, int *err)
{
	static const int64_t backoff[] = { 0, 10, 100, 500, 1000, 2000 };
	redisReply *r = NULL;
	unsigned i;
	int e = -ECONNREFUSED;
	bool sent = false;

	pthread_mutex_lock(&c->cmd_lock);
	for (i = 0; i < sizeof(backoff) / sizeof(backoff[0]); i++) {
		if (backoff[i])
			sleep_ms(backoff[i]);
		if (c->cmd == NULL && (e = conn_open(&c->ep, &c->cmd)) != 0)
			continue;
		r = script(c, c->cmd, s, nargs, args, lens, &e);
		if (r != NULL || e != -EIO)
			break;
		/* c->err set: the connection failed, the command may have
		 * run; no c->err: a "not now" reply, it did not */
		sent = sent || c->cmd->err != 0;
		conn_free(&c->cmd);
		e = -EIO;
	}
	pthread_mutex_unlock(&c->cmd_lock);
	/* a later try that could not connect does not undo an earlier one
	 * that may have run */
	if (r == NULL && (e == -EIO || e == -ECONNREFUSED))
		e = sent ? -EIO : -ECONNREFUSED;
	*err = e;
	return r;
}

/* ---- connect, close, register -------------------------------------- */

int ctp_cluster_connect(ctp_cluster **cluster, const ctp_cluster_opts *opts)
{
	static const ctp_cluster_opts none;
	ctp_cluster *c;
	char host[64];
	int err;

	if (cluster == NULL)
		return -EINVAL;
	if (opts == NULL)
		opts = &none;
	if ((opts->ns && !name_ok(opts->ns, MAX_NAME)) ||
	    (opts->node && !name_ok(opts->node, MAX_NAME - 1)) ||
	    opts->claim_after < 0 ||
	    (opts->claim_after > 0 && opts->claim_after < CTP_MSEC(10)) ||
	    opts->result_ttl < 0 ||
	    (opts->result_ttl > 0 && opts->result_ttl < CTP_MSEC(1)) ||
	    (opts->drain < 0 && opts->drain != CTP_FOREVER))
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	err = parse_url(opts->url, &c->ep);
	if (err) {
		free(c);
		return err;
	}
	strcpy(c->ns, opts->ns ? opts->ns : "ctp");
	if (opts->node) {
		strcpy(c->node, opts->node);
	} else {
		char *p;

		if (gethostname(host, sizeof(host)) != 0)
			strcpy(host, "host");
		host[sizeof(host) - 1] = '\0';
		for (p = host; *p; p++)
			if (!(isalnum((unsigned char)*p) || *p == '_' ||
			      *p == '.' || *p == '-'))
				*p = '_';
		snprintf(c->node, sizeof(c->node), "%.40s-%ld", host,
		         (long)getpid());
	}
	c->claim_after = opts->claim_after ? opts->claim_after : DEF_CLAIM;
	c->result_ttl = opts->result_ttl ? opts->result_ttl : DEF_TTL;
	c->drain = opts->drain ? opts->drain : DEF_DRAIN;
	c->max_deliveries = opts->max_deliveries ? opts->max_deliveries
	                                         : DEF_MAXD;
	pthread_mutex_init(&c->cmd_lock, NULL);
	err = conn_open(&c->ep, &c->cmd);
	if (err) {
		pthread_mutex_destroy(&c->cmd_lock);
		free(c);
		return err;
	}
	*cluster = c;
	return 0;
}

void ctp_cluster_close(ctp_cluster *c)
{
	struct kind *k, *n;

	if (c == NULL)
		return;
	conn_free(&c->cmd);
	for (k = c->kinds; k; k = n) {
		n = k->next;
		free(k);
	}
	pthread_mutex_destroy(&c->cmd_lock);
	free(c);
}

int ctp_cluster_register(ctp_cluster *c, const char *kind, ctp_job_fn fn,
                         void *arg, unsigned flags)
{
	struct kind *k;
	unsigned n = 0;

	if (c == NULL || !name_ok(kind, MAX_NAME) || fn == NULL ||
	    (flags & ~CTP_JOB_ISOLATED))
		return -EINVAL;
	if (atomic_load(&c->serving))
		return -EBUSY;
	for (k = c->kinds; k; k = k->next, n++)
		if (strcmp(k->name, kind) == 0)
			return -EEXIST;
	if (n >= MAX_KINDS)
		return -ENOSPC;
	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return -ENOMEM;
	strcpy(k->name, kind);
	strcpy(k->cursor, "0-0");
	k->fn = fn;
	k->arg = arg;
	k->flags = flags;
	k->next = c->kinds;
	c->kinds = k;
	return 0;
}

/* ---- any process: submit, cancel, status, wait -------------------- */

static void new_id(char id[CTP_JOB_ID_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[12];
	size_t got = 0;
	int i;

	while (got < sizeof(b)) {
		ssize_t n = getrandom(b + got, sizeof(b) - got, 0);

		if (n > 0)
			got += (size_t)n;
		else if (errno != EINTR)
			break;
	}
	if (got < sizeof(b)) { /* no getrandom: time, pid and a counter */
		static atomic_uint seq;
		uint64_t t = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 40);
		unsigned s = atomic_fetch_add(&seq, 1);

		memcpy(b, &t, 8);
		memcpy(b + 8, &s, 4);
	}
	for (i = 0; i < 12; i++) {
		id[2 * i] = hex[b[i] >> 4];
		id[2 * i + 1] = hex[b[i] & 15];
	}
	id[24] = '\0';
}

static bool id_ok(const char *id)
{
	return id != NULL && name_ok(id, CTP_JOB_ID_SIZE - 1);
}

int ctp_cluster_submit(ctp_cluster *c, const char *kind, const void *payload,
                       size_t len, const ctp_job_opts *opts,
                       char id[CTP_JOB_ID_SIZE])
{
	static const ctp_job_opts none;
	char myid[CTP_JOB_ID_SIZE], dl[24], tm[24];
	const char *args[6];
	size_t lens[6];
	redisReply *r;
	int err;

	if (opts == NULL)
		opts = &none;
	if (c == NULL || id == NULL || !name_ok(kind, MAX_NAME) ||
	    (payload == NULL && len > 0) || opts->delay < 0 ||
	    opts->timeout < 0 ||
	    (opts->key && (*opts->key == '\0' ||
	                   strlen(opts->key) > MAX_KEY)))
		return -EINVAL;
	if (len > CTP_JOB_MAX_PAYLOAD)
		return -EMSGSIZE;
	new_id(myid);
	snprintf(dl, sizeof(dl), "%lld", ms_up(opts->delay));
	snprintf(tm, sizeof(tm), "%lld", ms_up(opts->timeout));
	args[0] = myid;
	args[1] = kind;
	args[2] = len ? payload : "";
	args[3] = dl;
	args[4] = tm;
	args[5] = opts->key ? opts->key : "";
	lens[0] = strlen(myid);
	lens[1] = strlen(kind);
	lens[2] = len;
	lens[3] = strlen(dl);
	lens[4] = strlen(tm);
	lens[5] = strlen(args[5]);
	r = cmd_script(c, S_SUBMIT, 6, args, lens, &err);
	if (r == NULL) {
		if (err == -EPROTO)
			err = -EIO;
		if (err == -EIO)
			strcpy(id, myid); /* it may have been stored */
		return err;
	}
	if (r->type != REDIS_REPLY_STRING || r->len >= CTP_JOB_ID_SIZE) {
		freeReplyObject(r);
		strcpy(id, myid);
		return -EIO;
	}
	memcpy(id, r->str, r->len);
	id[r->len] = '\0';
	freeReplyObject(r);
	return 0;
}

int ctp_cluster_cancel(ctp_cluster *c, const char *id)
{
	char ttl[24], call[CTP_JOB_ID_SIZE];
	const char *args[3];
	redisReply *r;
	long long v;
	int err;

	if (c == NULL || !id_ok(id))
		return c && id ? -ENOENT : -EINVAL;
	snprintf(ttl, sizeof(ttl), "%lld", ms_up(c->result_ttl));
	new_id(call); /* a retry after a lost reply gets the same answer */
	args[0] = id;
	args[1] = ttl;
	args[2] = call;
	r = cmd_script(c, S_CANCEL, 3, args, NULL, &err);
	if (r == NULL)
		return err == -EPROTO ? -EIO : err;
	v = r->type == REDIS_REPLY_INTEGER ? r->integer : 99;
	freeReplyObject(r);
	switch (v) {
	case 0: return 0;
	case 1: return -EINPROGRESS;
	case 2: return -EALREADY;
	case -2: return -ENOENT;
	default: return -EIO;
	}
}

void ctp_job_info_clear(ctp_job_info *info)
{
	if (info == NULL)
		return;
	free(info->output);
	memset(info, 0, sizeof(*info));
}

/* STATUS: fills info (may be NULL); *rem_ms: ms until a queued job's
 * deadline, -1 when none. */
static int status_of(ctp_cluster *c, const char *id, ctp_job_info *info,
                     long long *rem_ms)
{
	char ttl[24];
	const char *args[2];
	redisReply *r, **e;
	int err;

	snprintf(ttl, sizeof(ttl), "%lld", ms_up(c->result_ttl));
	args[0] = id;
	args[1] = ttl;
	r = cmd_script(c, S_STATUS, 2, args, NULL, &err);
	if (r == NULL)
		return err == -EPROTO ? -EIO : err;
	if (r->type == REDIS_REPLY_INTEGER && r->integer == -2) {
		freeReplyObject(r);
		return -ENOENT;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 6) {
		freeReplyObject(r);
		return -EIO;
	}
	e = r->element;
	if (rem_ms)
		*rem_ms = e[5]->integer;
	if (info) {
		memset(info, 0, sizeof(*info));
		info->state = (int)e[0]->integer;
		info->status = (int)e[1]->integer;
		info->attempts = (unsigned)e[2]->integer;
		if (e[3]->type == REDIS_REPLY_STRING)
			snprintf(info->node, sizeof(info->node), "%s",
			         e[3]->str);
		if (e[4]->type == REDIS_REPLY_STRING && e[4]->len > 0) {
			info->output = malloc(e[4]->len);
			if (info->output == NULL) {
				freeReplyObject(r);
				return -ENOMEM;
			}
			memcpy(info->output, e[4]->str, e[4]->len);
			info->output_len = e[4]->len;
		}
	}
	freeReplyObject(r);
	return 0;
}

int ctp_cluster_status(ctp_cluster *c, const char *id, ctp_job_info *info)
{
	if (c == NULL || info == NULL || id == NULL)
		return -EINVAL;
	if (!id_ok(id))
		return -ENOENT;
	return status_of(c, id, info, NULL);
}

static bool ended(int state)
{
	return state == CTP_JOB_DONE || state == CTP_JOB_CANCELLED ||
	       state == CTP_JOB_DEAD;
}

/* A subscription to the job's end on a connection of its own. */
static int wait_subscribe(ctp_cluster *c, const char *id, redisContext **out)
{
	redisReply *r;
	int err;

	err = conn_open(&c->ep, out);
	if (err)
		return err;
	r = cmd_fmt(*out, &err, "SUBSCRIBE %s:end:%s", c->ns, id);
	if (r == NULL) {
		conn_free(out);
		return -EIO;
	}
	freeReplyObject(r);
	return 0;
}

int ctp_cluster_wait(ctp_cluster *c, const char *id, int64_t timeout,
                     ctp_job_info *info)
{
	int64_t until, t0 = now_ns();
	redisContext *sub = NULL;
	ctp_job_info mine;
	int err, backoff = BACKOFF_MIN_MS;

	if (c == NULL || id == NULL || (timeout < 0 && timeout != CTP_FOREVER))
		return -EINVAL;
	if (!id_ok(id))
		return -ENOENT;
	until = timeout == CTP_FOREVER || timeout > INT64_MAX - t0
	        ? INT64_MAX : t0 + timeout;
	for (;;) {
		long long rem = -1;
		int64_t left, wait_ms;
		struct pollfd pfd;

		if (sub == NULL && wait_subscribe(c, id, &sub) != 0) {
			/* Redis is away: wait for it with backoff. */
			left = until - now_ns();
			if (left <= 0)
				return -ETIMEDOUT;
			sleep_ms(left / CTP_MSEC(1) < backoff
			                 ? left / CTP_MSEC(1) + 1 : backoff);
			backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
			                                       : backoff * 2;
			continue;
		}
		err = status_of(c, id, &mine, &rem);
		if (err == 0 && ended(mine.state)) {
			conn_free(&sub);
			if (info)
				*info = mine;
			else
				ctp_job_info_clear(&mine);
			return 0;
		}
		if (err == 0)
			ctp_job_info_clear(&mine);
		else if (err != -EIO && err != -ECONNREFUSED) {
			conn_free(&sub);
			return err;
		}
		left = until - now_ns();
		if (left <= 0) {
			conn_free(&sub);
			return -ETIMEDOUT;
		}
		wait_ms = left == INT64_MAX ? -1 : left / CTP_MSEC(1) + 1;
		if (wait_ms > INT_MAX)
			wait_ms = INT_MAX;
		if (rem >= 0 && (wait_ms < 0 || rem + 1 < wait_ms))
			wait_ms = rem + 1; /* its deadline: STATUS ends it */
		if (err != 0 && (wait_ms < 0 || wait_ms > backoff))
			wait_ms = backoff;
		pfd.fd = sub->fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, (int)wait_ms) > 0) {
			void *msg = NULL;

			if (redisBufferRead(sub) != REDIS_OK) {
				conn_free(&sub);
				continue;
			}
			while (redisGetReplyFromReader(sub, &msg) == REDIS_OK &&
			       msg != NULL) {
				freeReplyObject(msg);
				msg = NULL;
			}
		}
	}
}

/* ---- a node: the serve loop ----------------------------------------- */

/* Passed to an isolated job's process ahead of its payload. fn and arg are
 * the same addresses in the process copy (CTP_JOB_ISOLATED's rule). */
struct iso_head {
	ctp_job_fn fn;
	void      *arg;
	unsigned   attempt;
};

static int iso_trampoline(const void *in, size_t len, ctp_output *out,
                          ctp_token *token)
{
	struct iso_head h;

	int r;

	memcpy(&h, in, sizeof(h));
	len -= sizeof(h);
	r = h.fn(len ? (const char *)in + sizeof(h) : NULL, len, h.attempt,
	         out, token, h.arg);
	/* A run the stop cut short (the token fired with -ESHUTDOWN before
	 * fn returned) says so to the parent as -ESHUTDOWN, the status a
	 * killed one gets too: end_call hands it back. A run that ended
	 * before the fire keeps fn's value, even if the fire reaches the
	 * parent before its result does. */
	return ctp_token_reason(token) == -ESHUTDOWN ? -ESHUTDOWN : r;
}

static int job_run(void *arg, ctp_token *token)
{
	struct job *j = arg;
	int r, on = RUN_ON;

	/* acquire: pairs with claim_running's CAS. Claimed before it
	 * started (it was queued in the pool at the claim): it is handed
	 * back, so it does not run here. */
	if (atomic_load_explicit(&j->run, memory_order_acquire) != RUN_ON)
		return -ESHUTDOWN;
	j->ran = true;
	r = j->kind->fn(j->payload, j->len, j->attempt, j->out, token,
	                j->kind->arg);
	/* acq_rel: pairs with claim_running's CAS; only one of the two
	 * wins. Winning here means fn returned before the stop claimed the
	 * job, so before the fire: its value is its result. Losing, it is
	 * handed back and the value is not read. */
	atomic_compare_exchange_strong_explicit(&j->run, &on, RUN_RETURNED,
	    memory_order_acq_rel, memory_order_acquire);
	return r;
}

static void job_done(void *arg, int status)
{
	struct job *j = arg;
	struct srv *s = j->srv;
	uint64_t one = 1;

	pthread_mutex_lock(&s->done_lock);
	j->status = status;
	j->done_next = s->done_head;
	s->done_head = j;
	pthread_mutex_unlock(&s->done_lock);
	if (write(s->efd, &one, sizeof(one)) < 0) {
		/* an eventfd write fails only on overflow: it is readable */
	}
}

static void job_free(struct job *j)
{
	ctp_task_release(j->task);
	ctp_output_free(j->out);
	free(j->payload);
	free(j);
}

static void jobs_unlink(struct srv *s, struct job *j)
{
	struct job **pp;

	for (pp = &s->jobs; *pp; pp = &(*pp)->next)
		if (*pp == j) {
			*pp = j->next;
			s->njobs--;
			if (j->kind->flags & CTP_JOB_ISOLATED)
				s->iso_inflight--;
			return;
		}
}

static void srv_drop(struct srv *s)
{
	conn_free(&s->rd);
	conn_free(&s->nc);
	conn_free(&s->sub);
	s->reading = false;
	if (!s->down) {
		s->down = true;
		s->backoff = BACKOFF_MIN_MS;
	} else {
		s->backoff = s->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
		                                             : s->backoff * 2;
	}
	s->retry_at = now_ns() + CTP_MSEC(s->backoff);
}

/* A node's script; on a failed connection the loop drops all three. */
static redisReply *nscript(struct srv *s, int sc, int nargs,
                           const char **args, const size_t *lens)
{
	redisReply *r;
	int err;

	if (s->nc == NULL)
		return NULL;
	r = script(s->c, s->nc, sc, nargs, args, lens, &err);
	if (r == NULL && err == -EIO)
		srv_drop(s);
	return r;
}

/* One script call of a pipeline: its arguments (after the namespace) and
 * room for the numbers they point into. */
struct call {
	int         sc;
	int         nargs;
	const char *args[10];
	size_t      lens[10];
	char        num[4][24];
};

#define PIPE_MAX 64 /* calls sent in one round trip at most */

/* Sends n (<= PIPE_MAX) script calls in one round trip and reads their
 * replies: replies[i] is NULL for an error reply, or for every call from
 * the one where the connection failed (the loop then drops it and
 * reconnects). A serve loop with many jobs pays one round trip per batch
 * of STARTs and one per batch of ends, not one per job. */
static void pipeline(struct srv *s, struct call *calls, int n,
                     redisReply **replies)
{
	const char *argv[14];
	size_t len[14];
	int i, a, sent = 0;
	bool drop = false;

	for (i = 0; i < n; i++)
		replies[i] = NULL;
	if (s->nc == NULL)
		return;
	for (i = 0; i < n; i++) {
		argv[0] = "EVAL";
		len[0] = 4;
		argv[1] = script_text[calls[i].sc];
		len[1] = strlen(argv[1]);
		argv[2] = "0";
		len[2] = 1;
		argv[3] = s->c->ns;
		len[3] = strlen(s->c->ns);
		for (a = 0; a < calls[i].nargs; a++) {
			argv[4 + a] = calls[i].args[a];
			len[4 + a] = calls[i].lens[a];
		}
		if (redisAppendCommandArgv(s->nc, 4 + a, argv, len) != REDIS_OK)
			break;
		sent++;
	}
	for (i = 0; i < sent; i++) {
		void *r;

		if (redisGetReply(s->nc, &r) != REDIS_OK || r == NULL) {
			drop = true;
			break;
		}
		if (((redisReply *)r)->type == REDIS_REPLY_ERROR) {
			drop = drop || transient(((redisReply *)r)->str);
			freeReplyObject(r);
			continue;
		}
		replies[i] = r;
	}
	/* The replies read before a failure stay: those calls ran, and a
	 * START whose reply were thrown away would be read again after the
	 * reconnect and STARTed a second time (one attempt burnt). */
	if (drop || sent < n)
		srv_drop(s);
}

static void call_arg(struct call *c, const char *v, size_t len)
{
	c->args[c->nargs] = v;
	c->lens[c->nargs++] = len;
}

static void call_str(struct call *c, const char *v)
{
	call_arg(c, v, strlen(v));
}

static void call_num(struct call *c, int slot, long long v)
{
	snprintf(c->num[slot], sizeof(c->num[slot]), "%lld", v);
	call_str(c, c->num[slot]);
}

/* HANDBACK; true when Redis answered (whatever it answered). */
static bool handback(struct srv *s, struct kind *k, const char *id,
                     const char *entry, unsigned attempt)
{
	char at[16], ttl[24];
	const char *args[6] = { id, k->name, entry, s->c->node, at, ttl };
	redisReply *r;

	snprintf(at, sizeof(at), "%u", attempt);
	snprintf(ttl, sizeof(ttl), "%lld", ms_up(s->c->result_ttl));
	r = nscript(s, S_HANDBACK, 6, args, NULL);
	if (r == NULL)
		return false;
	freeReplyObject(r);
	s->nhanded++;
	return true;
}

static struct kind *kind_of(struct srv *s, const char *name, size_t n)
{
	struct kind *k;

	for (k = s->c->kinds; k; k = k->next)
		if (strlen(k->name) == n && memcmp(k->name, name, n) == 0)
			return k;
	return NULL;
}

/* Worker processes not running a job of ours: an isolated job occupies
 * one (and a worker thread) from its start to its end. */
static unsigned free_processes(const struct srv *s)
{
	return s->processes > s->iso_inflight ? s->processes - s->iso_inflight
	                                      : 0;
}

/* How many jobs this node may take now: the pool's threads that run and
 * hold nothing; with only isolated kinds, also its free processes. */
static unsigned free_workers(struct srv *s)
{
	ctp_stats st;
	uint64_t busy;
	unsigned f;
	struct kind *k;
	bool all_iso = true;

	/* The pool's figures are two loads, not one snapshot: a task taken
	 * between them is in neither, so a node that trusted them alone
	 * took one job too many. Our own count of jobs in flight (started
	 * or being started, until the loop has seen their end) is exact for
	 * our jobs; the pool's figures add what else runs on it. */
	ctp_pool_stats(s->pool, &st);
	busy = st.running + st.queued;
	if (busy < s->njobs)
		busy = s->njobs;
	f = busy >= st.threads ? 0 : st.threads - (unsigned)busy;
	for (k = s->c->kinds; k; k = k->next)
		all_iso = all_iso && (k->flags & CTP_JOB_ISOLATED);
	if (all_iso && f > free_processes(s))
		f = free_processes(s);
	return f;
}

/* A delivery this node has started: running, or ended with its result
 * not yet written (after a reconnect its entry is still pending). An
 * entry id is unique only within its stream: the kind is part of it. */
static bool job_known(struct srv *s, const struct kind *k, const char *entry)
{
	struct job *j;

	for (j = s->jobs; j; j = j->next)
		if (j->kind == k && strcmp(j->entry, entry) == 0)
			return true;
	for (j = s->unwritten; j; j = j->next)
		if (j->kind == k && strcmp(j->entry, entry) == 0)
			return true;
	return false;
}

/* A delivery START answered "run it" for: give it to the pool. r is
 * START's reply {1, attempt, rem_ms, payload}; the caller frees it. */
static void start_job(struct srv *s, struct kind *k, const char *entry,
                      const char *id, redisReply *r)
{
	ctp_task_opts to = { .done = job_done };
	struct job *j;
	int err;

	j = calloc(1, sizeof(*j));
	if (j == NULL)
		goto fail;
	j->srv = s;
	j->kind = k;
	strcpy(j->id, id);
	strcpy(j->entry, entry);
	j->attempt = (unsigned)r->element[1]->integer;
	j->len = r->element[3]->type == REDIS_REPLY_STRING
	         ? r->element[3]->len : 0;
	if (r->element[2]->integer >= 0)
		to.timeout = r->element[2]->integer > 0
		             ? CTP_MSEC(r->element[2]->integer) : 1;
	if (k->flags & CTP_JOB_ISOLATED) {
		struct iso_head h = { k->fn, k->arg, j->attempt };
		char *in = malloc(sizeof(h) + j->len);

		if (in == NULL)
			goto fail;
		memcpy(in, &h, sizeof(h));
		if (j->len)
			memcpy(in + sizeof(h), r->element[3]->str, j->len);
		err = ctp_pool_submit_isolated(s->pool, iso_trampoline, in,
		                               sizeof(h) + j->len, j, &to,
		                               &j->task);
		free(in);
	} else {
		if (j->len) {
			j->payload = malloc(j->len);
			if (j->payload == NULL)
				goto fail;
			memcpy(j->payload, r->element[3]->str, j->len);
		}
		if (ctp_output_create(&j->out, CTP_JOB_MAX_PAYLOAD) != 0)
			goto fail;
		err = ctp_pool_submit(s->pool, job_run, j, &to, &j->task);
	}
	if (err != 0)
		goto fail;
	j->next = s->jobs;
	s->jobs = j;
	s->njobs++;
	if (k->flags & CTP_JOB_ISOLATED)
		s->iso_inflight++;
	return;
fail:
	/* the pool refused it (full, shut down, no memory): back at once,
	 * the attempt counted */
	handback(s, k, id, entry, (unsigned)r->element[1]->integer);
	if (j) {
		ctp_output_free(j->out);
		free(j->payload);
		free(j);
	}
}

/* The deliveries of one read, STARTed in one round trip. */
struct batch {
	int          n;
	unsigned     iso;   /* isolated ones among them */
	struct kind *kind[PIPE_MAX];
	const char  *entry[PIPE_MAX], *id[PIPE_MAX];
	struct call  call[PIPE_MAX];
};

static void batch_start(struct srv *s, struct batch *b)
{
	redisReply *rep[PIPE_MAX];
	int i;

	pipeline(s, b->call, b->n, rep);
	for (i = 0; i < b->n; i++) {
		redisReply *r = rep[i];

		/* NULL: it stays pending under our name, read again after
		 * the reconnect; {0}: not to run (START said why) */
		if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
		    r->element[0]->integer == 1)
			start_job(s, b->kind[i], b->entry[i], b->id[i], r);
		if (r)
			freeReplyObject(r);
	}
	b->n = 0;
	b->iso = 0;
}

/* A delivery: queued for START (batch_start), or handed back unstarted. */
static void deliver(struct srv *s, struct batch *b, struct kind *k,
                    const char *entry, const char *id)
{
	struct call *c;

	if (strlen(id) >= CTP_JOB_ID_SIZE || strlen(entry) >= 48 ||
	    job_known(s, k, entry))
		return;
	/* The stop's token, not only s->stopping: a job submitted after the
	 * stop fired may be delivered before the loop has seen the fire, and
	 * it must never start here. */
	if (s->stopping || ctp_token_cancelled(s->stop) ||
	    ((k->flags & CTP_JOB_ISOLATED) && free_processes(s) <= b->iso)) {
		/* (an isolated job past the free processes: a read over
		 * several kinds may bring one; another node may be free) */
		handback(s, k, id, entry, 0);
		return;
	}
	if (b->n == PIPE_MAX)
		batch_start(s, b);
	c = &b->call[b->n];
	c->sc = S_START;
	c->nargs = 0;
	call_str(c, id);
	call_str(c, k->name);
	call_str(c, entry);
	call_str(c, s->c->node);
	call_num(c, 0, s->c->max_deliveries);
	call_num(c, 1, ms_up(s->c->result_ttl));
	b->kind[b->n] = k;
	b->entry[b->n] = entry;
	b->id[b->n] = id;
	b->n++;
	if (k->flags & CTP_JOB_ISOLATED)
		b->iso++;
}

/* Walks an XREADGROUP/XAUTOCLAIM list of [entry, [field, value, ...]].
 * Past s->budget deliveries (an XREADGROUP over several streams may bring
 * COUNT from each) the rest go back unstarted. */
static void deliver_list(struct srv *s, struct kind *k, redisReply *list)
{
	struct batch *b;
	size_t i, f;

	if (list == NULL || list->type != REDIS_REPLY_ARRAY)
		return;
	b = malloc(sizeof(*b));
	if (b == NULL)
		return; /* stays pending under our name: read again later */
	b->n = 0;
	b->iso = 0;
	for (i = 0; i < list->elements && s->nc; i++) {
		redisReply *e = list->element[i], *fv;

		if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
		    e->element[0]->type != REDIS_REPLY_STRING)
			continue;
		fv = e->element[1];
		if (fv->type != REDIS_REPLY_ARRAY) {
			/* deleted while pending: just acknowledge it */
			redisReply *a;
			int err;

			a = cmd_fmt(s->nc, &err, "XACK %s:q:%s " GROUP " %s",
			            s->c->ns, k->name, e->element[0]->str);
			if (a)
				freeReplyObject(a);
			else if (err == -EIO)
				srv_drop(s);
			continue;
		}
		for (f = 0; f + 1 < fv->elements; f += 2)
			if (fv->element[f]->type == REDIS_REPLY_STRING &&
			    strcmp(fv->element[f]->str, "id") == 0 &&
			    fv->element[f + 1]->type == REDIS_REPLY_STRING)
			{
				if (s->budget == 0) {
					handback(s, k, fv->element[f + 1]->str,
					         e->element[0]->str, 0);
					continue;
				}
				if (s->budget != UINT_MAX)
					s->budget--;
				deliver(s, b, k, e->element[0]->str,
				        fv->element[f + 1]->str);
			}
	}
	if (b->n)
		batch_start(s, b);
	free(b);
}

/* An XREADGROUP reply: [[stream, [entries]], ...]. */
static void deliver_streams(struct srv *s, redisReply *r)
{
	size_t i, pre = strlen(s->c->ns) + 3;

	if (r == NULL || r->type != REDIS_REPLY_ARRAY)
		return;
	for (i = 0; i < r->elements; i++) {
		redisReply *st = r->element[i];
		struct kind *k;

		if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 ||
		    st->element[0]->type != REDIS_REPLY_STRING ||
		    st->element[0]->len <= pre)
			continue;
		k = kind_of(s, st->element[0]->str + pre,
		            st->element[0]->len - pre);
		if (k)
			deliver_list(s, k, st->element[1]);
	}
}

/* Our own pending entries (XREADGROUP from 0): after a (re)connect those
 * not running here are started; once stopping, handed back (each round
 * acknowledges what it hands back, so the next round reads the next ones). */
static void own_pending(struct srv *s)
{
	struct kind *k;

	for (k = s->c->kinds; k && s->nc; k = k->next) {
		for (int round = 0; round < 1000 && s->nc; round++) {
			unsigned long before = s->nhanded;
			redisReply *r;
			size_t n = 0;
			int err;

			r = cmd_fmt(s->nc, &err, "XREADGROUP GROUP " GROUP
			            " %s COUNT 100 STREAMS %s:q:%s 0",
			            s->c->node, s->c->ns, k->name);
			if (r == NULL) {
				if (err == -EIO)
					srv_drop(s);
				break;
			}
			if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
			    r->element[0]->elements == 2)
				n = r->element[0]->element[1]->elements;
			deliver_streams(s, r);
			freeReplyObject(r);
			if (!s->stopping || n == 0 || s->nhanded == before)
				break;
		}
	}
}

static int srv_connect(struct srv *s)
{
	struct kind *k;
	redisReply *r;
	int err;

	if ((err = conn_open(&s->c->ep, &s->nc)) != 0 ||
	    (err = conn_open(&s->c->ep, &s->sub)) != 0 ||
	    (!s->stopping && (err = conn_open(&s->c->ep, &s->rd)) != 0))
		goto fail;
	for (k = s->c->kinds; k; k = k->next) {
		r = cmd_fmt(s->nc, &err, "XGROUP CREATE %s:q:%s " GROUP
		            " 0 MKSTREAM", s->c->ns, k->name);
		if (r)
			freeReplyObject(r);
		else if (err == -EIO)
			goto fail;
	}
	r = cmd_fmt(s->sub, &err, "SUBSCRIBE %s:cancel %s:wake", s->c->ns,
	            s->c->ns);
	if (r == NULL)
		goto fail;
	freeReplyObject(r);
	/* the second subscription's confirmation */
	if (redisGetReply(s->sub, (void **)&r) != REDIS_OK)
		goto fail;
	freeReplyObject(r);
	/* After an outage no node could send heartbeats, so every entry
	 * looks idle: reclaiming at once would take live nodes' jobs. Wait
	 * claim_after, as long as their heartbeats need to show they live. */
	s->next_claim = s->down ? now_ns() + s->c->claim_after : 0;
	s->down = false;
	s->next_beat = s->next_promote = 0;
	/* Connected: from here a failure is a disconnect the loop retries,
	 * not a failed start (own_pending may have started jobs that point
	 * to s). */
	own_pending(s);
	return 0;
fail:
	srv_drop(s);
	return err ? err : -EIO;
}

static void fire_job(struct job *j)
{
	if (!j->cancel_sent && !j->finished) {
		j->cancel_sent = true;
		/* running: its token fires; queued in the pool: done runs
		 * here (-ECANCELED) */
		ctp_task_cancel(j->task);
	}
}

static void on_cancel_id(struct srv *s, const char *id, size_t n)
{
	struct job *j, *next;

	for (j = s->jobs; j; j = next) {
		next = j->next;
		if (strlen(j->id) == n && memcmp(j->id, id, n) == 0)
			fire_job(j);
	}
}

static void read_sub(struct srv *s)
{
	void *m = NULL;

	if (redisBufferRead(s->sub) != REDIS_OK) {
		srv_drop(s);
		return;
	}
	while (s->sub && redisGetReplyFromReader(s->sub, &m) == REDIS_OK &&
	       m != NULL) {
		redisReply *r = m;
		size_t pre = strlen(s->c->ns) + 1;

		if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
		    strcmp(r->element[0]->str, "message") == 0 &&
		    r->element[1]->len > pre) {
			const char *ch = r->element[1]->str + pre;

			if (strcmp(ch, "cancel") == 0)
				on_cancel_id(s, r->element[2]->str,
				             r->element[2]->len);
			else if (strcmp(ch, "wake") == 0)
				s->next_promote = 0;
		}
		freeReplyObject(r);
		m = NULL;
	}
}

static void send_read(struct srv *s)
{
	unsigned n = free_workers(s), nk = 0, i;
	struct kind *k;
	const char *argv[9 + 2 * MAX_KINDS];
	size_t len[9 + 2 * MAX_KINDS];
	char cnt[16], names[MAX_KINDS][MAX_NAME * 2 + 8], block[8];
	unsigned nkinds = 0;
	int argc = 0, done = 0;

	if (n == 0 || s->rd == NULL)
		return;
	for (k = s->c->kinds; k; k = k->next)
		nkinds++;
	snprintf(cnt, sizeof(cnt), "%u", n);
	argv[argc++] = "XREADGROUP";
	argv[argc++] = "GROUP";
	argv[argc++] = GROUP;
	argv[argc++] = s->c->node;
	argv[argc++] = "COUNT";
	argv[argc++] = cnt;
	argv[argc++] = "BLOCK";
	argv[argc++] = block; /* set below, once the kinds are known */
	argv[argc++] = "STREAMS";
	for (k = s->c->kinds; k; k = k->next) {
		if ((k->flags & CTP_JOB_ISOLATED) && free_processes(s) == 0)
			continue; /* no process for it: leave it to others */
		snprintf(names[nk], sizeof(names[nk]), "%s:q:%s", s->c->ns,
		         k->name);
		argv[argc++] = names[nk++];
	}
	if (nk == 0)
		return;
	/* A kind left out (no free process) comes back into the read as
	 * soon as a process frees: a short block makes that prompt. */
	strcpy(block, nk == nkinds ? "1000" : "50");
	for (i = 0; i < nk; i++)
		argv[argc++] = ">";
	for (i = 0; i < (unsigned)argc; i++)
		len[i] = strlen(argv[i]);
	if (redisAppendCommandArgv(s->rd, argc, argv, len) != REDIS_OK) {
		srv_drop(s);
		return;
	}
	while (!done)
		if (redisBufferWrite(s->rd, &done) != REDIS_OK) {
			srv_drop(s);
			return;
		}
	s->reading = true;
	s->read_n = n;
}

static void read_rd(struct srv *s)
{
	void *m = NULL;

	if (redisBufferRead(s->rd) != REDIS_OK) {
		srv_drop(s);
		return;
	}
	if (redisGetReplyFromReader(s->rd, &m) != REDIS_OK) {
		srv_drop(s);
		return;
	}
	if (m == NULL)
		return; /* the rest of the reply is still on its way */
	s->reading = false;
	if (((redisReply *)m)->type == REDIS_REPLY_ERROR) {
		/* e.g. NOGROUP after a Redis restart without persistence:
		 * reconnecting makes the groups again */
		freeReplyObject(m);
		srv_drop(s);
		return;
	}
	/* Jobs reclaimed while the read was outstanding took workers the
	 * read's COUNT counted as free: start no more than are free now. */
	s->budget = free_workers(s);
	if (s->budget > s->read_n)
		s->budget = s->read_n;
	deliver_streams(s, m);
	s->budget = UINT_MAX;
	freeReplyObject(m);
}

static void heartbeat(struct srv *s)
{
	const char **args;
	char (*at)[16];
	struct job *j, **list;
	unsigned n = 0, i;
	redisReply *r;
	int err;

	if (s->njobs == 0 || s->nc == NULL)
		return;
	args = malloc(sizeof(*args) * (1 + 4 * s->njobs));
	at = malloc(sizeof(*at) * s->njobs);
	list = malloc(sizeof(*list) * s->njobs);
	if (args == NULL || at == NULL || list == NULL)
		goto out;
	args[0] = s->c->node;
	for (j = s->jobs; j; j = j->next) {
		if (j->handed || j->finished)
			continue;
		snprintf(at[n], sizeof(at[n]), "%u", j->attempt);
		args[1 + 4 * n] = j->kind->name;
		args[2 + 4 * n] = j->id;
		args[3 + 4 * n] = j->entry;
		args[4 + 4 * n] = at[n];
		list[n++] = j;
	}
	if (n == 0)
		goto out;
	r = script_v(s->c, s->nc, S_HEARTBEAT, (int)(1 + 4 * n), args, &err);
	if (r == NULL) {
		if (err == -EIO)
			srv_drop(s);
		goto out;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == n)
		for (i = 0; i < n; i++)
			if (r->element[i]->integer != 1)
				/* 2: a cancel is stored (its message may have
				 * been missed); 0: the job is no longer ours */
				fire_job(list[i]);
	freeReplyObject(r);
out:
	free(args);
	free(at);
	free(list);
}

static void reclaim(struct srv *s)
{
	struct kind *k;
	char idle[24];

	snprintf(idle, sizeof(idle), "%lld", ms_up(s->c->claim_after));
	for (k = s->c->kinds; k && s->nc && !s->stopping; k = k->next) {
		unsigned n = free_workers(s);
		redisReply *r;
		int err;

		if (n == 0)
			return;
		if (k->flags & CTP_JOB_ISOLATED) {
			if (free_processes(s) == 0)
				continue;
			n = n < free_processes(s) ? n : free_processes(s);
		}
		r = cmd_fmt(s->nc, &err, "XAUTOCLAIM %s:q:%s " GROUP
		            " %s %s %s COUNT %u", s->c->ns, k->name,
		            s->c->node, idle, k->cursor, n);
		if (r == NULL) {
			if (err == -EIO)
				srv_drop(s);
			continue;
		}
		if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
			if (r->element[0]->type == REDIS_REPLY_STRING)
				snprintf(k->cursor, sizeof(k->cursor), "%s",
				         r->element[0]->str);
			deliver_list(s, k, r->element[1]);
		}
		freeReplyObject(r);
	}
}

/* Makes due delayed jobs startable; returns ms until the next is due. */
static int64_t promote(struct srv *s)
{
	struct kind *k;
	int64_t next = 1000;

	for (k = s->c->kinds; k && s->nc; k = k->next) {
		const char *args[1] = { k->name };
		redisReply *r = nscript(s, S_PROMOTE, 1, args, NULL);

		if (r == NULL)
			continue;
		if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0 &&
		    r->integer < next)
			next = r->integer;
		freeReplyObject(r);
	}
	return next;
}

/* The write that ends job j in its record, or false when there is none to
 * make (handed back already). FINISH: its function returned (DONE), or it
 * never ran because of a cancel or its timeout (CANCELLED); HANDBACK: it
 * never ran for another reason (the pool's shutdown, no process), or its
 * run was cut short by the stop. */
static bool end_call(struct srv *s, struct job *j, struct call *c)
{
	bool ran, cut;
	const void *data = NULL;
	size_t len = 0;
	int state;

	if (j->handed)
		return false;
	if (j->kind->flags & CTP_JOB_ISOLATED) {
		ran = ctp_task_state(j->task) == CTP_TASK_DONE;
		cut = ran && j->status == -ESHUTDOWN; /* iso_trampoline */
	} else {
		ran = j->ran;
		/* claimed by the stop (set by this thread): its run, if
		 * it ran, was cut short or ended as the fire came */
		cut = atomic_load_explicit(&j->run, memory_order_relaxed) ==
		      RUN_HANDED;
	}
	c->nargs = 0;
	call_str(c, j->id);
	call_str(c, j->kind->name);
	call_str(c, j->entry);
	call_str(c, s->c->node);
	call_num(c, 0, j->attempt);
	if ((!ran && j->status != -ECANCELED && j->status != -ETIMEDOUT) ||
	    cut) {
		c->sc = S_HANDBACK;
		call_num(c, 3, ms_up(s->c->result_ttl));
		return true;
	}
	state = ran ? CTP_JOB_DONE : CTP_JOB_CANCELLED;
	if (j->out)
		ctp_output_data(j->out, &data, &len);
	else if (state == CTP_JOB_DONE)
		ctp_task_output(j->task, &data, &len);
	c->sc = S_FINISH;
	call_num(c, 1, state);
	call_num(c, 2, j->status);
	call_arg(c, len ? data : "", len);
	call_num(c, 3, ms_up(s->c->result_ttl));
	return true;
}

/* Writes the ends of the jobs in s->unwritten, PIPE_MAX per round trip;
 * those Redis did not answer stay for the next try. */
static void write_ends(struct srv *s)
{
	struct call *calls = malloc(sizeof(*calls) * PIPE_MAX);
	struct job *batch[PIPE_MAX], *keep = NULL, *j;
	redisReply *rep[PIPE_MAX];
	int n, i;

	if (calls == NULL)
		return;
	while (s->unwritten && !s->down) {
		for (n = 0; n < PIPE_MAX && s->unwritten; ) {
			j = s->unwritten;
			s->unwritten = j->next;
			if (!end_call(s, j, &calls[n])) {
				job_free(j); /* handed back already */
				continue;
			}
			batch[n++] = j;
		}
		pipeline(s, calls, n, rep);
		for (i = 0; i < n; i++) {
			if (rep[i] == NULL) {
				batch[i]->next = keep;
				keep = batch[i];
				continue;
			}
			if (calls[i].sc == S_HANDBACK)
				s->nhanded++;
			freeReplyObject(rep[i]);
			job_free(batch[i]);
		}
	}
	/* what was not written (Redis away) waits for the reconnect */
	while (keep) {
		j = keep;
		keep = j->next;
		j->next = s->unwritten;
		s->unwritten = j;
	}
	free(calls);
}

static void drain_done(struct srv *s)
{
	struct job *list, *j, *next;
	uint64_t v;

	if (read(s->efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing new */
	}
	pthread_mutex_lock(&s->done_lock);
	list = s->done_head;
	s->done_head = NULL;
	pthread_mutex_unlock(&s->done_lock);
	for (j = list; j; j = next) {
		next = j->done_next;
		/* An isolated task's output is there once its done has
		 * returned, a moment after it pushed the job here. */
		if (j->kind->flags & CTP_JOB_ISOLATED)
			ctp_task_wait(j->task, CTP_FOREVER, NULL);
		j->finished = true;
		jobs_unlink(s, j);
		j->next = s->unwritten;
		s->unwritten = j;
	}
	write_ends(s);
}

/* The stop, just before the pool's shutdown fires the tokens: claims
 * every thread job whose function has not returned (queued in the pool or
 * running). A job whose function returned first keeps its result (its
 * done brings its end); an isolated job is left to its status: the
 * shutdown (grace 0) kills its process at once if it still runs, and
 * end_call decides (claiming it here could not tell a run that had just
 * ended, its result on its way, from a cut one). */
static void claim_running(struct srv *s)
{
	struct job *j;

	for (j = s->jobs; j; j = j->next) {
		int on = RUN_ON;

		if (j->kind->flags & CTP_JOB_ISOLATED)
			continue;
		/* acq_rel: pairs with job_run's CAS */
		atomic_compare_exchange_strong_explicit(&j->run, &on,
		    RUN_HANDED, memory_order_acq_rel, memory_order_acquire);
	}
}

/* After the fire: hands back at once every claimed job not handed back
 * yet (those whose done came first were handed back by end_call), then
 * the loop waits for their done callbacks. */
static void hand_back_running(struct srv *s)
{
	struct job *j;
	int tries = 0;

	for (j = s->jobs; j; j = j->next) {
		/* relaxed: RUN_HANDED is only ever set by this thread
		 * (claim_running) */
		if (j->handed || (j->kind->flags & CTP_JOB_ISOLATED) ||
		    atomic_load_explicit(&j->run, memory_order_relaxed) !=
		    RUN_HANDED)
			continue;
		j->handed = true;
		while (tries < RECONNECT_TRIES &&
		       !handback(s, j->kind, j->id, j->entry, j->attempt)) {
			/* Redis away: retry with backoff; the job is not lost
			 * either way (its entry stays pending under our
			 * name, and claim_after hands it to another node).
			 * An error reply is not retried, for the same
			 * reason. */
			if (!s->down)
				break;
			if (now_ns() < s->retry_at)
				sleep_ms((s->retry_at - now_ns()) / CTP_MSEC(1)
				         + 1);
			srv_connect(s);
			tries++; /* for all the jobs: Redis stays away */
		}
	}
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

int ctp_cluster_serve(ctp_cluster *c, ctp_pool *pool, ctp_token *stop)
{
	struct srv s;
	struct kind *k;
	ctp_stats st;
	int64_t drain_end = 0, fired_at = 0, period;
	bool fired = false, expect = false;
	int err;

	if (c == NULL || pool == NULL || stop == NULL || c->kinds == NULL)
		return -EINVAL;
	memset(&s, 0, sizeof(s));
	ctp_pool_stats(pool, &st);
	for (k = c->kinds; k; k = k->next)
		if (k->flags & CTP_JOB_ISOLATED) {
			if (st.processes == 0)
				return -ENOTSUP;
		}
	if (!atomic_compare_exchange_strong(&c->serving, &expect, true))
		return -EBUSY;
	s.c = c;
	s.pool = pool;
	s.stop = stop;
	s.processes = st.processes;
	s.budget = UINT_MAX;
	pthread_mutex_init(&s.done_lock, NULL);
	s.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s.stopfd = ctp_token_fd(stop);
	if (s.efd < 0 || s.stopfd < 0) {
		err = s.efd < 0 ? -errno : s.stopfd;
		goto fail;
	}
	err = srv_connect(&s);
	if (err) {
		conn_free(&s.rd);
		conn_free(&s.nc);
		conn_free(&s.sub);
		goto fail;
	}
	period = min64(c->claim_after / 4, CTP_SEC(1));
	for (;;) {
		struct pollfd pfd[4];
		int n = 0, irs = -1, isub = -1;
		int64_t now = now_ns(), wake = now + CTP_SEC(1);

		if (!s.stopping && ctp_token_cancelled(stop)) {
			s.stopping = true;
			conn_free(&s.rd); /* anything it delivered stays
			                     pending: handed back below */
			s.reading = false;
			drain_end = c->drain == CTP_FOREVER
			            ? INT64_MAX : now + c->drain;
			own_pending(&s); /* delivered, not started: back now */
		}
		if (s.down && now >= s.retry_at)
			srv_connect(&s);
		drain_done(&s);
		if (s.stopping && !fired &&
		    (s.njobs == 0 || now >= drain_end)) {
			/* the drain is over: the pool's shutdown fires the
			 * tokens of the jobs still running (-ESHUTDOWN) and
			 * drops the queued ones (their dones run here) */
			fired = true;
			fired_at = now;
			claim_running(&s);
			ctp_pool_shutdown(pool, 0, 0);
			drain_done(&s);
			hand_back_running(&s);
		}
		if (fired && s.njobs == 0 &&
		    (s.unwritten == NULL || now - fired_at > c->claim_after))
			break; /* (Redis stayed away, or kept refusing them:
			          claim_after hands the unwritten ones to
			          another node) */
		if (!s.down) {
			if (now >= s.next_beat) {
				heartbeat(&s);
				s.next_beat = now + period;
			}
			if (!s.stopping && now >= s.next_claim) {
				reclaim(&s);
				s.next_claim = now + period;
			}
			if (!s.stopping && now >= s.next_promote)
				s.next_promote = now +
				        CTP_MSEC(promote(&s));
			if (!s.stopping && !s.reading)
				send_read(&s);
		}
		wake = min64(wake, s.next_beat);
		if (!s.stopping)
			wake = min64(wake, min64(s.next_claim,
			                         s.next_promote));
		if (s.down)
			wake = min64(wake, s.retry_at);
		if (s.stopping && !fired)
			wake = min64(wake, drain_end);
		pfd[n].fd = s.efd;
		pfd[n++].events = POLLIN;
		if (!s.stopping) {
			pfd[n].fd = s.stopfd;
			pfd[n++].events = POLLIN;
		}
		if (s.reading && s.rd) {
			irs = n;
			pfd[n].fd = s.rd->fd;
			pfd[n++].events = POLLIN;
		}
		if (s.sub) {
			isub = n;
			pfd[n].fd = s.sub->fd;
			pfd[n++].events = POLLIN;
		}
		now = now_ns();
		if (poll(pfd, (nfds_t)n, wake <= now ? 0
		         : (int)((wake - now) / CTP_MSEC(1) + 1)) <= 0)
			continue;
		if (isub >= 0 && pfd[isub].revents && s.sub)
			read_sub(&s);
		if (irs >= 0 && pfd[irs].revents && s.rd)
			read_rd(&s);
	}
	/* Nothing may stay pending under our name: what was delivered but
	 * never started goes back too; then the consumer goes. */
	/* (bounded: Redis that stays away, or keeps dropping us, leaves
	 * the rest to claim_after) */
	for (int tries = 0; s.down && tries < RECONNECT_TRIES; tries++) {
		sleep_ms(s.backoff);
		srv_connect(&s);
	}
	write_ends(&s);
	own_pending(&s); /* skips the unwritten ones (job_known) */
	for (k = c->kinds; k && s.nc; k = k->next) {
		redisReply *r = cmd_fmt(s.nc, &err, "XPENDING %s:q:%s " GROUP
		                        " - + 1 %s", c->ns, k->name, c->node);
		bool empty = r && r->type == REDIS_REPLY_ARRAY &&
		             r->elements == 0;

		if (r)
			freeReplyObject(r);
		if (empty) {
			r = cmd_fmt(s.nc, &err, "XGROUP DELCONSUMER %s:q:%s "
			            GROUP " %s", c->ns, k->name, c->node);
			if (r)
				freeReplyObject(r);
		}
	}
	/* Ended, their end not written (Redis stayed away): their entries
	 * stay pending, and claim_after hands them to another node. Freed
	 * only now, so that own_pending above did not hand them back as
	 * never started. */
	while (s.unwritten) {
		struct job *j = s.unwritten;

		s.unwritten = j->next;
		job_free(j);
	}
	ctp_pool_shutdown(pool, 0, CTP_FOREVER);
	err = 0;
fail:
	conn_free(&s.rd);
	conn_free(&s.nc);
	conn_free(&s.sub);
	if (s.efd >= 0)
		close(s.efd);
	pthread_mutex_destroy(&s.done_lock);
	atomic_store(&c->serving, false);
	return err;
}
