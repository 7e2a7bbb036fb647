/*
 * jobserver: an HTTP server that runs background jobs on a ctpool pool.
 *
 * The contract (command line, endpoints, JSON, errors, signals, summary
 * line) is SPEC.md next to this file. This comment is about the design.
 *
 * Jobs, the map and record lifetime
 *   Every accepted job has a record (struct job). A record is filled in and
 *   its tasks submitted before it is put in the map, so a client only ever
 *   sees ids of jobs whose tasks were all accepted; ids are handed out in
 *   order from 1 (server.last_id is the latest).
 *
 *   The map is a hash table of the records it holds, keyed by id, chained
 *   through the records (hnext), with a power-of-two number of buckets and
 *   bucket = id & (nbuckets - 1): live ids are mostly a run of consecutive
 *   numbers (plus a few long-lived jobs, such as periodic series), which
 *   this spreads one per bucket. It grows when it holds more records than
 *   buckets and shrinks below a quarter, so its memory follows the records
 *   alive, not the ids ever issued (an array indexed by id, or a ring from
 *   the oldest live id, would be pinned by one periodic job that lives for
 *   months). If growing fails the chains just get longer: an insert never
 *   fails.
 *
 *   A record that has finished (every done callback has run) goes to the
 *   tail of the finished FIFO (fnext), stamped with its end (end_ns). The
 *   FIFO is in order of end, so expiry only ever looks at its head: a
 *   record leaves the map when it has been finished for --retain seconds,
 *   or when more than --max-records are finished (oldest end first). A job
 *   that has not finished (queued, running, a periodic series between runs)
 *   is not in the FIFO and is never dropped. An id not in the map is 410
 *   if it is at most last_id (issued, then dropped), else 404.
 *
 *   Expiry is lazy: it runs under the lock at the start of every lookup
 *   (GET/DELETE /jobs/ID) and every insert (POST), so a client never sees a
 *   record past its time, and under load the map holds at most
 *   --max-records finished records plus the jobs alive (at most --queue +
 *   --threads) plus those that finished since the last request (at most
 *   as many again). It does not run in done: dropping a record can free it
 *   and release its handles, which done, on a pool thread, the timer or a
 *   cancelling thread, should not do. No sweep runs on an idle server:
 *   nothing is added to the map without a request, so an idle server
 *   holds no more than the cap it had under load, and the next request
 *   drops what is due before it looks anything up.
 *
 *   References: a record is freed, and its ctpool handles released, by the
 *   last of its holders to let go. The map holds one reference while the
 *   record is in it; a handler that looks a record up takes one under the
 *   lock (refs++) and drops it (job_put) when it has finished calling ctpool
 *   with the record's handles, so a record dropped from the map while a
 *   GET or DELETE still uses it lives until that handler is done. The tasks
 *   hold none: a record enters the FIFO, and so can leave the map, only
 *   when its last done has done with it (job_finish touches nothing after
 *   its unlock), and ctpool calls neither fn nor done after that. refs is
 *   guarded by the lock; the free happens after the unlock (job_free calls
 *   ctp_task_release and friends: see the locking rule). Expiry collects the
 *   records whose count fell to zero and frees them after unlocking. A
 *   record that never made it into the map (a pipeline whose consumer was
 *   refused) is freed by job_abort once its done callbacks have run.
 *
 * Locking rule
 *   One mutex (server.lock) guards the map, the finished FIFO, last_id and
 *   the mutable fields of every record (id, refs, hnext, fnext, end_ns,
 *   started_ms, finished_ms, status, runs, last_status, dones_left, queue).
 *   A task's done callback takes it, and ctpool may run done on the thread
 *   that cancels: the DELETE handler (ctp_task_cancel, ctp_token_cancel),
 *   the shutdown thread (ctp_pool_shutdown) or the pool's timer. So nothing
 *   ever calls into the pool while holding server.lock: find the record
 *   under the lock and take a reference, copy what is needed, unlock, call
 *   ctpool, then drop the reference (and free the record, outside the lock,
 *   if it was the last).
 *
 * HTTP threads
 *   libmicrohttpd runs in its internal epoll mode with a pool of
 *   --http-threads threads, each one serving many connections: a handler
 *   that waited would stall every connection of its thread, so none does.
 *   Submits use queue_wait 0 (a full queue is a 503); a cancel only fires a
 *   token or runs a done on this thread (a few lock/unlock pairs); expiry
 *   and a rehash are bounded work under the lock, and frees happen after
 *   it. Two waits remain, both for something already under way that ends
 *   within microseconds: job_abort waits for the done callbacks of a
 *   pipeline's producer that it has just cancelled (queued: its done runs
 *   on this thread; running: it is in ctp_queue_push on its token, which
 *   wakes at once), and a GET of a finished spin job waits (ctp_task_wait)
 *   for the done that has stored its status to return, so that the handle
 *   answers for exit_signal and output.
 *
 * Who writes what
 *   The HTTP thread fills a record before submitting it; those fields are
 *   read-only afterwards. The task stamps started_ms when fn first begins,
 *   and counts each of its runs (runs, last_status) as it returns. done
 *   stores status and finished_ms, whether or not fn ran.
 *
 * Pipelines
 *   A producer and a consumer task, both children of one standalone group
 *   token, linked by a ctp_queue of 16. The job's deadline is the consumer's
 *   and its state and status are the consumer's. Each task's done closes the
 *   queue, so whichever side stops first, for whatever reason (end of
 *   stream, its own deadline, never started at all), the other one gets
 *   -ESHUTDOWN instead of waiting forever. The queue is destroyed by the
 *   last of the two done callbacks. Like any two-task pipeline on a bounded
 *   pool it needs two free workers: with --threads 1 and more than 16 items
 *   it waits until its deadline or a DELETE.
 *
 * Isolated jobs (kind spin)
 *   A spin job busy-loops in one of the pool's worker processes
 *   (ctp_pool_submit_isolated) and never looks at its token, so a DELETE,
 *   its deadline or the shutdown can stop it only by killing its process:
 *   ctpool does that --kill-after seconds after the token fired, and puts
 *   a fresh worker process in its place. The function runs in a copy of
 *   the program, so it cannot touch its record: the parent learns its end
 *   from done, and its exit signal and output (its pid) from the handle.
 *   The pool, and with it its fork server, is made before any other
 *   thread exists (the HTTP daemon's, the signal thread): a fork copies
 *   only the calling thread, and locks other threads held would stay
 *   held in the copy. The worker processes inherit the blocked SIGTERM and
 *   SIGINT, so a Ctrl-C sent to the whole process group reaches only the
 *   signal thread, and the shutdown stops them (ctp_pool_shutdown reaps
 *   every one of them and the fork server).
 *
 * Scheduling (delay_ms, period_ms, priority)
 *   Optional on every POST, they map onto ctp_task_opts.delay, .period and
 *   .priority; ctpool's timer makes a delayed job due, and its priority
 *   queues pick the next job. A job's task function is one wrapper
 *   (thread_task) around the kind's work, so that every run of a periodic
 *   job is counted and its status kept in the record (runs, last_status)
 *   before the run returns; done is called once, at the end of the series.
 *   The ms values are bounded so that ms -> ns cannot overflow int64_t.
 *   A pipeline takes a delay and a priority (both tasks get them) but not a
 *   period, and neither does a spin job (ctpool: an isolated task cannot
 *   be periodic): those are 400s, checked before anything is submitted.
 *
 * Redis mode (--redis; compiled with JOBSERVER_REDIS, when the build has
 * libctpool-redis)
 *   The jobs live in Redis (ctpool-redis.h): this process keeps no record
 *   and no job handle (the map stays empty). A POST is parsed and checked
 *   as in the local mode, plus what Redis mode refuses (redis_refuses);
 *   then the kind's work parameters are encoded again, canonically, as the
 *   job's payload (payload_encode: "kind=sleep&ms=500") and
 *   ctp_cluster_submit stores it; GET and DELETE are ctp_cluster_status
 *   and ctp_cluster_cancel of the library's string id, answered the same
 *   on every node. Whichever node takes the job parses the payload again
 *   with the same code (payload_decode) and runs the work of the local
 *   mode: thread_work[] on a record on its stack, spin_for in a worker
 *   process. The job functions are static and their arg is NULL or a
 *   static object (redis_kinds[]), so they are valid in the worker
 *   processes' copy too (spin is CTP_JOB_ISOLATED).
 *
 *   Threads: main makes the pool first (its fork server copies a program
 *   of one thread), then connects to Redis and registers the kinds
 *   (hiredis starts no thread; the order would keep the rule if it did),
 *   starts the serve thread (ctp_cluster_serve on the pool until
 *   server.stop fires), then the HTTP daemon and the signal thread. The
 *   cluster is shared by the HTTP threads: the library serializes their
 *   commands on one connection under its own lock.
 *
 *   A handler in Redis mode waits, unlike the rule of "HTTP threads"
 *   above: one round trip to Redis, and while Redis cannot be reached the
 *   library's retries (10, 100, 500, 1000 and 2000 ms of backoff, about
 *   3.6 s with a refused loopback connection) before it answers 503. The
 *   library's API is blocking; --http-threads spreads the wait.
 *
 *   Shutdown: the signal thread fires server.stop and joins the serve
 *   thread. serve stops taking jobs, lets the running ones go on for
 *   --drain, shuts the pool down (their tokens fire with -ESHUTDOWN),
 *   hands every job it did not finish back to the other nodes at once,
 *   waits for every job function, and returns; the pool is then shut
 *   down, so the usual ctp_pool_shutdown only collects its result. The
 *   HTTP daemon stops after that (GET/DELETE use the cluster until then)
 *   and the cluster is closed last, in cleanup.
 *
 * Signals and shutdown
 *   main blocks SIGTERM and SIGINT before any thread exists (so every thread
 *   inherits the mask) and ignores SIGPIPE. A dedicated thread takes the
 *   first signal with sigwait, refuses new jobs, shuts the pool down with
 *   the configured drain and grace, stops the HTTP daemon, prints the
 *   summary, and hands the exit code to main, which frees everything. If
 *   tasks were abandoned (grace ran out) the records, queues and the pool
 *   are left alone, still reachable from the global `server`, because the
 *   abandoned tasks may still use them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ctpool.h"
#ifdef JOBSERVER_REDIS
#include "ctpool-redis.h"
#endif

#define BODY_MAX       4096         /* bytes of a POST body; more is a 400 */
#define PIPE_CAPACITY  16           /* items in a pipeline's queue */
#define MAX_SECONDS    1000000.0    /* upper bound of --drain, --grace and
                                       --kill-after */
#define REPLY_MAX      1024         /* bytes of any JSON reply */
#define OUTPUT_SHOWN   64           /* bytes of a job's output in its JSON */
#define SCHED_MS_MAX   (INT64_MAX / 1000000) /* largest delay_ms/period_ms:
                                       its ns still fit in int64_t */
#define MAX_RECORDS    INT64_C(1000000000) /* upper bound of --max-records */
#define HTTP_THREADS_MAX 64         /* upper bound of --http-threads */
#define MAP_MIN        64           /* buckets of the map, at least */
#define KEY_MAX        256          /* bytes of a Redis mode key (the
                                       library's limit) */
#define CLAIM_MIN      CTP_MSEC(10) /* smallest --claim-after (the
                                       library's) */

/* ---- job kinds and parameters ------------------------------------------ */

enum kind { K_SLEEP, K_CPU, K_FETCH, K_PIPELINE, K_SPIN, NKINDS };

enum param { P_KIND, P_MS, P_ITERATIONS, P_HOST, P_PORT, P_ITEMS, P_TIMEOUT,
             P_DELAY, P_PERIOD, P_PRIORITY, P_KEY, NPARAMS };

#define BIT(p) (1u << (p))

/* Parameters every kind accepts (period_ms: not pipeline or spin; key: in
 * Redis mode only, form_parse refuses it otherwise). */
#define OPTIONAL_PARAMS (BIT(P_TIMEOUT) | BIT(P_DELAY) | BIT(P_PERIOD) | \
                         BIT(P_PRIORITY) | BIT(P_KEY))

static const struct {
	const char *name;
	unsigned    params;   /* required parameters besides kind */
} kinds[NKINDS] = {
	[K_SLEEP]    = { "sleep",    BIT(P_MS) },
	[K_CPU]      = { "cpu",      BIT(P_ITERATIONS) },
	[K_FETCH]    = { "fetch",    BIT(P_HOST) | BIT(P_PORT) },
	[K_PIPELINE] = { "pipeline", BIT(P_ITEMS) },
	[K_SPIN]     = { "spin",     BIT(P_MS) },
};

/* Name and range of every numeric parameter (host, kind, priority and key
 * are not). */
static const struct {
	const char *name;
	int64_t     min, max;
} params[NPARAMS] = {
	[P_KIND]       = { "kind",       0, 0 },
	[P_MS]         = { "ms",         0, 3600000 },
	[P_ITERATIONS] = { "iterations", 1, INT64_C(1000000000000) },
	[P_HOST]       = { "host",       0, 0 },
	[P_PORT]       = { "port",       1, 65535 },
	[P_ITEMS]      = { "items",      1, 1000000000 },
	[P_TIMEOUT]    = { "timeout_ms", 1, 3600000 },
	[P_DELAY]      = { "delay_ms",   0, SCHED_MS_MAX },
	[P_PERIOD]     = { "period_ms",  0, SCHED_MS_MAX },
	[P_PRIORITY]   = { "priority",   0, 0 },
	[P_KEY]        = { "key",        0, 0 },
};

/* ctp_task_opts.priority by name; the numbers -1, 0, 1 are accepted too. */
static const struct {
	const char *name, *number;
	int         value;
} priorities[] = {
	{ "low",    "-1", CTP_PRIORITY_LOW },
	{ "normal", "0",  CTP_PRIORITY_NORMAL },
	{ "high",   "1",  CTP_PRIORITY_HIGH },
};
#define NPRIORITIES (sizeof priorities / sizeof priorities[0])

/* ---- records ------------------------------------------------------------ */

struct job {
	/* Set by the HTTP thread before submission, read-only afterwards. */
	enum kind          kind;
	int64_t            n;            /* ms, iterations or items */
	struct sockaddr_in addr;         /* fetch: where to connect */
	int64_t            timeout_ms;   /* 0 = no deadline */
	int64_t            delay_ms;     /* 0 = due at once */
	int64_t            period_ms;    /* 0 = runs once */
	int                priority;     /* CTP_PRIORITY_* */
	int64_t            submitted_ms;
	ctp_task          *task;         /* the task; pipeline: the consumer */
	ctp_task          *producer;     /* pipeline only */
	ctp_token         *group;        /* pipeline only: parent of both */
	uint64_t           cpu_sink;     /* cpu: the result, written by the task */
	const char        *key;          /* Redis mode: the idempotency key, in
	                                    the request's body; NULL = none */

	/* Protected by server.lock. */
	uint64_t           id;           /* set when put in the map; 0 before */
	unsigned           refs;         /* the map's + one per handler */
	struct job        *hnext;        /* next in its bucket of the map */
	struct job        *fnext;        /* next in the finished FIFO, then in
	                                    a list of records to free */
	int64_t            end_ns;       /* when it entered the FIFO */
	int64_t            started_ms;   /* -1 until fn first starts */
	int64_t            finished_ms;  /* -1 until done */
	int                status;       /* valid once finished_ms >= 0 */
	uint64_t           runs;         /* runs of fn that have returned */
	int                last_status;  /* the last of them's; valid once
	                                    runs > 0 */
	int                dones_left;   /* done callbacks still to come */
	ctp_queue         *queue;        /* pipeline; NULL once destroyed */
};

/* What a handler copies out of a record under the lock. */
struct job_view {
	uint64_t   id;
	enum kind  kind;
	ctp_task  *task, *producer;
	ctp_token *group;
	int64_t    delay_ms, period_ms;
	int        priority;
	int64_t    submitted_ms, started_ms, finished_ms;
	int        status;
	uint64_t   runs;
	int        last_status;
	bool       all_done;             /* every done callback has run */
};

/* ---- the server ---------------------------------------------------------- */

/* One server per process. It is a global so that done callbacks reach the
 * lock, and so that what abandoned tasks still use stays reachable (for
 * LeakSanitizer) when the process exits without freeing it. */
static struct {
	/* Configuration, set by main before any thread starts. */
	struct sockaddr_in listen;
	unsigned           threads;
	unsigned           processes;    /* worker processes for spin jobs */
	size_t             queue;
	int64_t            drain_ns, grace_ns;
	int64_t            kill_after_ns;
	int64_t            retain_ns;    /* --retain: finished records kept */
	size_t             max_records;  /* --max-records: at most this many */
	unsigned           http_threads; /* --http-threads: MHD's pool */
	int64_t            start_ns;     /* CLOCK_MONOTONIC at startup */
	sigset_t           signals;      /* taken by the signal thread */
	const char        *redis_url;    /* --redis; NULL: the local mode */
	const char        *node;         /* --node; NULL: the library's name */
	int64_t            claim_after_ns; /* --claim-after */

	ctp_pool          *pool;
	struct MHD_Daemon *daemon;
	atomic_bool        stopping;     /* set at the signal: POSTs get 503 */
	int                exit_code;    /* set by the signal thread */
#ifdef JOBSERVER_REDIS
	/* Redis mode. Made by main before the HTTP daemon and the signal
	 * thread start, closed after both are gone; the library makes the
	 * cluster safe to share between threads (its own lock). */
	ctp_cluster       *cluster;
	ctp_token         *stop;         /* fired to end serve */
	pthread_t          serve_thread; /* runs ctp_cluster_serve */
	bool               serving;      /* serve_thread not joined yet: main's
	                                    until the signal thread starts, then
	                                    the signal thread's */
	int                serve_rc;     /* serve's result: written by the serve
	                                    thread, read after joining it */
#endif

	pthread_mutex_t    lock;         /* see "Locking rule" above */
	/* Protected by lock: the map, the finished FIFO, the last id. */
	struct job       **buckets;      /* job with id i: in buckets[i & mask] */
	size_t             nbuckets;     /* a power of two, >= MAP_MIN */
	size_t             nrecords;     /* records in the map */
	struct job        *fin_head, *fin_tail; /* finished, by end_ns */
	size_t             nfinished;    /* records in the FIFO */
	uint64_t           last_id;      /* ids 1..last_id have been issued */
} server = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int64_t now_ns(void)
{
	struct timespec ts;

	/* CLOCK_MONOTONIC cannot fail on Linux; a zero time is harmless. */
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds since the server started: the clock of every job time. */
static int64_t now_ms(void)
{
	return (now_ns() - server.start_ns) / 1000000;
}

/* A mutex error means a corrupted program; there is no way to go on. */
static void lock(void)
{
	int rc = pthread_mutex_lock(&server.lock);

	if (rc != 0) {
		fprintf(stderr, "jobserver: pthread_mutex_lock: %s\n", strerror(rc));
		abort();
	}
}

static void unlock(void)
{
	int rc = pthread_mutex_unlock(&server.lock);

	if (rc != 0) {
		fprintf(stderr, "jobserver: pthread_mutex_unlock: %s\n", strerror(rc));
		abort();
	}
}

/* ---- the map ------------------------------------------------------------- */

/* Called by main before any thread exists. */
static int map_init(void)
{
	server.buckets = calloc(MAP_MIN, sizeof *server.buckets);
	if (server.buckets == NULL)
		return -ENOMEM;
	server.nbuckets = MAP_MIN;
	return 0;
}

/* Moves every record to a table of n buckets; keeps the old one when there
 * is no memory for the new one (chains work at any length). Caller holds
 * the lock. */
static void map_resize(size_t n)
{
	struct job **b = calloc(n, sizeof *b);

	if (b == NULL)
		return;
	for (size_t i = 0; i < server.nbuckets; i++) {
		struct job *job = server.buckets[i], *next;

		for (; job != NULL; job = next) {
			next = job->hnext;
			job->hnext = b[job->id & (n - 1)];
			b[job->id & (n - 1)] = job;
		}
	}
	free(server.buckets);
	server.buckets = b;
	server.nbuckets = n;
}

/* The job with this id, or NULL. Caller holds the lock. */
static struct job *map_get(uint64_t id)
{
	struct job *job = server.buckets[id & (server.nbuckets - 1)];

	while (job != NULL && job->id != id)
		job = job->hnext;
	return job;
}

/* Caller holds the lock. */
static void map_remove(struct job *job)
{
	struct job **p = &server.buckets[job->id & (server.nbuckets - 1)];

	while (*p != job)
		p = &(*p)->hnext;
	*p = job->hnext;
	job->hnext = NULL;
	server.nrecords--;
	if (server.nbuckets > MAP_MIN && server.nrecords < server.nbuckets / 4)
		map_resize(server.nbuckets / 2);
}

/* Appends a record whose every done has run to the finished FIFO. Caller
 * holds the lock; the record is in the map. */
static void fifo_append(struct job *job)
{
	job->end_ns = now_ns();
	job->fnext = NULL;
	if (server.fin_tail != NULL)
		server.fin_tail->fnext = job;
	else
		server.fin_head = job;
	server.fin_tail = job;
	server.nfinished++;
}

/* Takes out of the map the finished records past --retain, and the oldest
 * ones beyond --max-records. Returns those nobody else holds, linked by
 * fnext, for the caller to free after unlocking (free_list). Caller holds
 * the lock. */
static struct job *map_expire(void)
{
	int64_t t = now_ns();
	struct job *dead = NULL;

	while (server.fin_head != NULL &&
	       (server.nfinished > server.max_records ||
	        t - server.fin_head->end_ns >= server.retain_ns)) {
		struct job *job = server.fin_head;

		server.fin_head = job->fnext;
		if (server.fin_head == NULL)
			server.fin_tail = NULL;
		server.nfinished--;
		map_remove(job);
		if (--job->refs == 0) {
			job->fnext = dead;
			dead = job;
		}
	}
	return dead;
}

static void job_free(struct job *job);

/* Frees a list made by map_expire. Called without the lock. */
static void free_list(struct job *dead)
{
	while (dead != NULL) {
		struct job *next = dead->fnext;

		job_free(dead);
		dead = next;
	}
}

/* Puts a fully submitted job in the map, with the map's reference, and
 * returns its id: the next one. Never fails. The caller must not touch the
 * record afterwards (once finished it may expire and be freed at once). */
static uint64_t map_insert(struct job *job)
{
	struct job *dead;
	struct job **b;
	uint64_t id;

	lock();
	dead = map_expire();
	id = job->id = ++server.last_id;
	job->refs = 1;
	if (server.nrecords >= server.nbuckets)
		map_resize(server.nbuckets * 2);
	b = &server.buckets[id & (server.nbuckets - 1)];
	job->hnext = *b;
	*b = job;
	server.nrecords++;
	/* Its tasks may all have finished already: done saw no id then. */
	if (job->dones_left == 0)
		fifo_append(job);
	unlock();
	free_list(dead);
	return id;
}

/* Caller holds the lock. */
static void job_view(const struct job *job, struct job_view *v)
{
	v->id = job->id;
	v->kind = job->kind;
	v->task = job->task;
	v->producer = job->producer;
	v->group = job->group;
	v->delay_ms = job->delay_ms;
	v->period_ms = job->period_ms;
	v->priority = job->priority;
	v->submitted_ms = job->submitted_ms;
	v->started_ms = job->started_ms;
	v->finished_ms = job->finished_ms;
	v->status = job->status;
	v->runs = job->runs;
	v->last_status = job->last_status;
	v->all_done = job->dones_left == 0;
}

/* Releases everything a record owns. Every done of the job has run. */
static void job_free(struct job *job)
{
	ctp_task_release(job->task);
	ctp_task_release(job->producer);
	ctp_token_release(job->group);
	ctp_queue_destroy(job->queue);
	free(job);
}

/* Drops a reference taken by map_find; frees the record if it was the
 * last (the record has left the map meanwhile). Called without the lock. */
static void job_put(struct job *job)
{
	bool last;

	lock();
	last = --job->refs == 0;
	unlock();
	if (last)
		job_free(job);
}

/* Looks up the record with this id, copies it into v and takes a reference
 * to it (give it back with job_put). Returns 200, 404 (never issued) or 410
 * (issued, and dropped since). */
static unsigned map_find(uint64_t id, struct job **out, struct job_view *v)
{
	struct job *dead, *job;
	unsigned code;

	lock();
	dead = map_expire();
	job = map_get(id);
	if (job != NULL) {
		job->refs++;
		job_view(job, v);
		code = MHD_HTTP_OK;
	} else {
		code = id <= server.last_id ? MHD_HTTP_GONE : MHD_HTTP_NOT_FOUND;
	}
	unlock();
	free_list(dead);
	*out = job;
	return code;
}

/* At exit, after the HTTP daemon has stopped: nobody holds a reference
 * but the map. */
static void map_free(void)
{
	for (size_t i = 0; i < server.nbuckets; i++) {
		struct job *job = server.buckets[i], *next;

		for (; job != NULL; job = next) {
			next = job->hnext;
			job_free(job);
		}
	}
	free(server.buckets);
	server.buckets = NULL;
	server.nbuckets = server.nrecords = server.nfinished = 0;
	server.fin_head = server.fin_tail = NULL;
}

/* ---- tasks --------------------------------------------------------------- */

/* Stamps the start of the job's first run (a periodic job starts again
 * and again: started_ms keeps the first). */
static void job_started(struct job *job)
{
	int64_t t = now_ms();

	lock();
	if (job->started_ms < 0)
		job->started_ms = t;
	unlock();
}

/* Counts a run that has returned status, before it returns it to ctpool:
 * so a client that sees the series end (status set by done) also sees
 * every run in runs. */
static void job_ran(struct job *job, int status)
{
	lock();
	job->runs++;
	job->last_status = status;
	unlock();
}

/* Records one done callback: the job's status if this task's status is the
 * job's; after the last one, destroys the pipeline queue (both fns have
 * returned by then, so nobody uses it) and puts the record in the finished
 * FIFO, from where it expires. */
static void job_finish(struct job *job, bool is_result, int status)
{
	int64_t t = now_ms();
	ctp_queue *dead = NULL;

	lock();
	if (is_result) {
		job->status = status;
		job->finished_ms = t;
	}
	if (--job->dones_left == 0) {
		dead = job->queue;
		job->queue = NULL;
		/* Not yet in the map (id 0): map_insert will append it. */
		if (job->id != 0)
			fifo_append(job);
	}
	/* From here on the record may expire and be freed: hands off. */
	unlock();
	ctp_queue_destroy(dead);
}

static void job_done(void *arg, int status)
{
	job_finish(arg, true, status);
}

/* The work of one run of each kind that runs on a pool thread (pipeline
 * aside); thread_task wraps it. */
static int sleep_run(struct job *job, ctp_token *token)
{
	return ctp_token_sleep(token, CTP_MSEC(job->n));
}

static int cpu_run(struct job *job, ctp_token *token)
{
	uint64_t x = 1;

	for (int64_t i = 0; i < job->n; i++) {
		/* One atomic load per 4096 steps keeps the check off the profile
		 * while a cancel still stops the loop within microseconds. */
		if ((i & 4095) == 0 && ctp_token_cancelled(token))
			return ctp_token_reason(token);
		x = x * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
	}
	job->cpu_sink = x; /* the work has an observable result */
	return 0;
}

/* The work of a spin job, in a worker process: busy-loops for ms, then
 * writes "pid=P", the process it ran in. */
static int spin_for(int64_t ms, ctp_output *out)
{
	int64_t end = now_ns() + CTP_MSEC(ms);
	char buf[32];
	int n;

	while (now_ns() < end)
		; /* the work: burn CPU, deaf to everything but SIGKILL */
	n = snprintf(buf, sizeof buf, "pid=%ld", (long)getpid());
	return ctp_output_write(out, buf, (size_t)n);
}

/* An isolated task: runs in a worker process, a copy of this program, with
 * the job's ms as its input. It busy-loops for ms and never looks at its
 * token: a DELETE, its deadline or the shutdown stop it only by killing
 * its process. Its output is "pid=P", the process it ran in. */
static int spin_task(const void *in, size_t in_len, ctp_output *out,
                     ctp_token *token)
{
	int64_t ms;

	(void)token; /* on purpose: this job cannot be asked to stop */
	if (in_len != sizeof ms)
		return -EINVAL;
	memcpy(&ms, in, sizeof ms);
	return spin_for(ms, out);
}

/* Waits until sock has `events` or the token fires. Returns 0 when the
 * socket is ready, the token's reason when it fired (a cancel wins over
 * data), or a negative errno. */
static int fetch_wait(int sock, short events, ctp_token *token, int tfd)
{
	struct pollfd fds[2] = {
		{ .fd = sock, .events = events },
		{ .fd = tfd,  .events = POLLIN },
	};

	/* Signals are blocked in every thread, so EINTR is not expected; the
	 * loop only turns over when poll was interrupted anyway. */
	while (poll(fds, 2, -1) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	if (fds[1].revents != 0)
		return ctp_token_reason(token);
	return 0;
}

static int fetch_connect(int sock, const struct sockaddr_in *addr,
                         ctp_token *token, int tfd)
{
	int err = 0;
	socklen_t len = sizeof err;
	int rc;

	if (connect(sock, (const struct sockaddr *)addr, sizeof *addr) == 0)
		return 0;
	if (errno != EINPROGRESS)
		return -errno;
	rc = fetch_wait(sock, POLLOUT, token, tfd);
	if (rc != 0)
		return rc;
	if (getsockopt(sock, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		return -errno;
	return -err;
}

/* Reads until EOF. Returns the byte count (capped at INT_MAX, the largest
 * status), the token's reason, or a negative errno. */
static int fetch_read(int sock, ctp_token *token, int tfd)
{
	char buf[4096];
	int64_t total = 0;

	for (;;) {
		int rc = fetch_wait(sock, POLLIN, token, tfd);
		ssize_t n;

		if (rc != 0)
			return rc;
		n = recv(sock, buf, sizeof buf, 0);
		if (n == 0)
			return total > INT_MAX ? INT_MAX : (int)total;
		if (n > 0)
			total += n;
		else if (errno != EAGAIN && errno != EINTR)
			return -errno;
	}
}

static int fetch_run(struct job *job, ctp_token *token)
{
	int tfd, sock, rc;

	tfd = ctp_token_fd(token);
	if (tfd < 0)
		return tfd;
	sock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	rc = fetch_connect(sock, &job->addr, token, tfd);
	if (rc == 0)
		rc = fetch_read(sock, token, tfd);
	/* Nothing was written, so close cannot lose data: its result does not
	 * change the job's. */
	(void)close(sock);
	return rc;
}

/* The work of the kinds that run on a pool thread, pipeline aside (local
 * mode: thread_task; Redis mode: redis_thread_job). */
static int (*const thread_work[NKINDS])(struct job *, ctp_token *) = {
	[K_SLEEP] = sleep_run, [K_CPU] = cpu_run, [K_FETCH] = fetch_run,
};

/* The task function of sleep, cpu and fetch jobs: one call per run (many
 * for a periodic job), each one counted in the record. */
static int thread_task(void *arg, ctp_token *token)
{
	struct job *job = arg;
	int rc;

	job_started(job);
	rc = thread_work[job->kind](job, token);
	job_ran(job, rc);
	return rc;
}

static int producer_task(void *arg, ctp_token *token)
{
	struct job *job = arg;

	for (int64_t i = 0; i < job->n; i++) {
		/* -ESHUTDOWN: the consumer is gone and closed the queue. */
		int rc = ctp_queue_push(job->queue, (void *)(intptr_t)i, token,
		                        CTP_FOREVER);
		if (rc != 0)
			return rc;
	}
	return 0; /* producer_done closes the queue: end of stream */
}

static int consumer_task(void *arg, ctp_token *token)
{
	struct job *job = arg;
	int64_t got = 0;

	job_started(job);
	for (;;) {
		void *item;
		int rc = ctp_queue_pop(job->queue, &item, token, CTP_FOREVER);

		if (rc == -ESHUTDOWN) /* closed and empty: did it all come? */
			return got == job->n ? 0 : -ESHUTDOWN;
		if (rc != 0)
			return rc; /* our token fired */
		got++;
	}
}

/* Each side's done closes the queue so the other side never waits for a
 * partner that has stopped or will never start. */
static void producer_done(void *arg, int status)
{
	struct job *job = arg;

	(void)status; /* the job's status is the consumer's */
	ctp_queue_close(job->queue);
	job_finish(job, false, 0);
}

static void consumer_done(void *arg, int status)
{
	struct job *job = arg;

	ctp_queue_close(job->queue);
	job_finish(job, true, status);
}

/* ---- submitting ---------------------------------------------------------- */

static int pipeline_submit(struct job *job, ctp_task_opts *opts)
{
	/* The producer is scheduled like the consumer (period excepted: a
	 * pipeline has none), so neither waits long for the other. */
	ctp_task_opts popts = { .done = producer_done, .queue_wait = 0,
	                        .delay = opts->delay,
	                        .priority = opts->priority };
	int rc;

	rc = ctp_queue_create(&job->queue, PIPE_CAPACITY);
	if (rc != 0)
		return rc;
	rc = ctp_token_create(&job->group, NULL);
	if (rc != 0)
		return rc;
	/* The deadline is the consumer's: the producer follows through the
	 * queue, which the consumer's done closes. */
	popts.parent = job->group;
	rc = ctp_pool_submit(server.pool, producer_task, job, &popts,
	                     &job->producer);
	if (rc != 0)
		return rc;
	opts->done = consumer_done;
	opts->parent = job->group;
	return ctp_pool_submit(server.pool, consumer_task, job, opts, &job->task);
}

/* Submits the job's task(s). On failure some task may have been accepted:
 * the caller then uses job_abort. */
static int job_submit(struct job *job)
{
	ctp_task_opts opts = {
		.done = job_done,
		.timeout = CTP_MSEC(job->timeout_ms),
		.queue_wait = 0, /* a full queue is the client's 503, not a wait */
		/* ms <= SCHED_MS_MAX: the products fit in int64_t */
		.delay = CTP_MSEC(job->delay_ms),
		.period = CTP_MSEC(job->period_ms),
		.priority = job->priority,
	};

	job->submitted_ms = now_ms();
	if (job->kind == K_PIPELINE)
		return pipeline_submit(job, &opts);
	if (job->kind == K_SPIN)
		return ctp_pool_submit_isolated(server.pool, spin_task, &job->n,
		                                sizeof job->n, job, &opts,
		                                &job->task);
	return ctp_pool_submit(server.pool, thread_task, job, &opts, &job->task);
}

/* Takes back a job that is not in the map: cancels whatever was accepted,
 * waits for its done (the record is its arg), then frees the record. */
static void job_abort(struct job *job)
{
	ctp_task *tasks[2] = { job->producer, job->task };

	if (job->group != NULL)
		(void)ctp_token_cancel(job->group); /* -EALREADY is fine too */
	else if (job->task != NULL)
		(void)ctp_task_cancel(job->task);   /* any answer: we wait below */
	for (int i = 0; i < 2; i++) {
		int rc = tasks[i] ? ctp_task_wait(tasks[i], CTP_FOREVER, NULL) : 0;

		if (rc != 0) {
			/* Cannot happen from an HTTP thread; leaking beats a
			 * use-after-free by a task that is still going. */
			fprintf(stderr, "jobserver: ctp_task_wait: %s\n",
			        ctp_strerror(rc));
			return;
		}
	}
	job_free(job);
}

/* ---- form bodies ---------------------------------------------------------- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes %XX and '+' in place. False for a bad escape or a NUL byte. */
static bool form_decode(char *s)
{
	char *out = s;

	for (; *s != '\0'; s++) {
		if (*s == '+') {
			*out++ = ' ';
		} else if (*s == '%') {
			int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);

			if (lo < 0 || (hi == 0 && lo == 0))
				return false;
			*out++ = (char)(hi * 16 + lo);
			s += 2;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
	return true;
}

/* Splits body (modified in place) into values[param]. with_key: key is a
 * parameter (Redis mode), else it is unknown like any other name. Returns
 * NULL or an error message for the client. */
static const char *form_parse(char *body, const char *values[NPARAMS],
                              bool with_key)
{
	char *save = NULL;

	for (char *pair = strtok_r(body, "&", &save); pair != NULL;
	     pair = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(pair, '=');
		int p;

		if (eq == NULL)
			return "malformed body: expected key=value pairs";
		*eq = '\0';
		if (!form_decode(pair) || !form_decode(eq + 1))
			return "malformed body: bad %-escape";
		for (p = 0; p < NPARAMS && strcmp(pair, params[p].name) != 0; p++)
			;
		if (p == NPARAMS || (p == P_KEY && !with_key))
			return "unknown parameter";
		if (values[p] != NULL)
			return "repeated parameter";
		values[p] = eq + 1;
	}
	return NULL;
}

/* A decimal integer made of digits only, within [min, max]. */
static bool parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
	char *end;
	long long v;

	if (s[0] < '0' || s[0] > '9')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* A priority by name or number (priorities[]), exactly as written. */
static bool parse_priority(const char *s, int *out)
{
	for (size_t i = 0; i < NPRIORITIES; i++) {
		if (strcmp(s, priorities[i].name) == 0 ||
		    strcmp(s, priorities[i].number) == 0) {
			*out = priorities[i].value;
			return true;
		}
	}
	return false;
}

static const char *priority_name(int priority)
{
	for (size_t i = 0; i < NPRIORITIES; i++) {
		if (priorities[i].value == priority)
			return priorities[i].name;
	}
	return "unknown";
}

/* Fills job from the parsed values. Returns NULL or a message in err. */
static const char *job_from_form(struct job *job, const char *values[NPARAMS],
                                 char *err, size_t errlen)
{
	int k;

	if (values[P_KIND] == NULL)
		return "missing parameter kind";
	for (k = 0; k < NKINDS && strcmp(values[P_KIND], kinds[k].name) != 0; k++)
		;
	if (k == NKINDS)
		return "unknown kind";
	job->kind = k;
	for (int p = P_KIND + 1; p < NPARAMS; p++) {
		bool wanted = kinds[k].params & BIT(p);
		int64_t v = 0;

		if (values[p] == NULL && wanted) {
			snprintf(err, errlen, "missing parameter %s", params[p].name);
			return err;
		}
		if (values[p] == NULL)
			continue;
		if (!wanted && !(OPTIONAL_PARAMS & BIT(p))) {
			snprintf(err, errlen, "parameter %s does not apply to kind %s",
			         params[p].name, kinds[k].name);
			return err;
		}
		if (p == P_HOST) {
			if (inet_pton(AF_INET, values[p], &job->addr.sin_addr) != 1)
				return "host must be an IPv4 address";
			continue;
		}
		if (p == P_PRIORITY) {
			if (!parse_priority(values[p], &job->priority))
				return "priority must be low, normal, high, -1, 0 or 1";
			continue;
		}
		if (p == P_KEY) {
			size_t len = strlen(values[p]);

			if (len == 0 || len > KEY_MAX)
				return "key must be 1 to 256 bytes";
			job->key = values[p];
			continue;
		}
		if (!parse_int(values[p], params[p].min, params[p].max, &v)) {
			snprintf(err, errlen, "%s must be an integer in %" PRId64
			         "..%" PRId64, params[p].name, params[p].min,
			         params[p].max);
			return err;
		}
		if (p == P_PORT)
			job->addr.sin_port = htons((uint16_t)v);
		else if (p == P_TIMEOUT)
			job->timeout_ms = v;
		else if (p == P_DELAY)
			job->delay_ms = v;
		else if (p == P_PERIOD)
			job->period_ms = v;
		else
			job->n = v;
	}
	/* ctpool refuses a periodic isolated task (-ENOTSUP), and a pipeline
	 * has no single function to repeat. */
	if (job->period_ms > 0 && (k == K_PIPELINE || k == K_SPIN)) {
		snprintf(err, errlen, "period_ms does not apply to kind %s",
		         kinds[k].name);
		return err;
	}
	return NULL;
}

#ifdef JOBSERVER_REDIS
/* ---- Redis mode: payloads and job functions ------------------------------ */

#define PAYLOAD_MAX 96  /* bytes of an encoded payload; the longest, a fetch
                           or a cpu job, takes about 50 */

/* Encodes a checked job's kind and work parameters as its payload, in the
 * form a client posts ("kind=fetch&host=127.0.0.1&port=9000"), so that the
 * node that runs it parses it with the same code (payload_decode).
 * Scheduling (timeout_ms, delay_ms) and key travel as ctp_job_opts.
 * Returns the length, or a negative errno. */
static int payload_encode(const struct job *job, char *buf, size_t size)
{
	char host[INET_ADDRSTRLEN];
	int n;

	switch (job->kind) {
	case K_FETCH:
		if (inet_ntop(AF_INET, &job->addr.sin_addr, host,
		              sizeof host) == NULL)
			return -errno;
		n = snprintf(buf, size, "kind=fetch&host=%s&port=%u", host,
		             (unsigned)ntohs(job->addr.sin_port));
		break;
	case K_CPU:
		n = snprintf(buf, size, "kind=cpu&iterations=%" PRId64, job->n);
		break;
	default: /* sleep and spin: ms */
		n = snprintf(buf, size, "kind=%s&ms=%" PRId64,
		             kinds[job->kind].name, job->n);
		break;
	}
	return n < 0 || (size_t)n >= size ? -EOVERFLOW : n;
}

/* Parses a payload with the checks of a POST into *job: the kind `want`
 * and its work parameters, nothing else. Runs on the node that took the
 * job (for spin, in a worker process). 0, or -EINVAL (the job's status:
 * a payload that did not come from payload_encode). */
static int payload_decode(const void *payload, size_t len, enum kind want,
                          struct job *job)
{
	const char *values[NPARAMS] = { NULL };
	char body[BODY_MAX + 1], err[128];

	if (len > BODY_MAX || (len > 0 && memchr(payload, '\0', len) != NULL))
		return -EINVAL;
	if (len > 0)
		memcpy(body, payload, len);
	body[len] = '\0';
	memset(job, 0, sizeof *job);
	job->addr.sin_family = AF_INET;
	if (form_parse(body, values, false) != NULL ||
	    job_from_form(job, values, err, sizeof err) != NULL ||
	    job->kind != want)
		return -EINVAL;
	for (int p = 0; p < NPARAMS; p++) {
		if (values[p] != NULL && (OPTIONAL_PARAMS & BIT(p)))
			return -EINVAL; /* scheduling is not payload */
	}
	return 0;
}

/* The arg of each kind's job function: the kind it runs. A static table,
 * so its addresses are the same in a worker process's copy. */
static const enum kind redis_kinds[NKINDS] = {
	K_SLEEP, K_CPU, K_FETCH, K_PIPELINE, K_SPIN,
};

/* The job function of sleep, cpu and fetch in Redis mode: the work of the
 * local mode (thread_work) on a record decoded from the payload. Any
 * attempt runs from the start; it writes no output. */
static int redis_thread_job(const void *payload, size_t len,
                            unsigned attempt, ctp_output *out,
                            ctp_token *token, void *arg)
{
	const enum kind *kind = arg;
	struct job job;
	int rc;

	(void)attempt;
	(void)out;
	rc = payload_decode(payload, len, *kind, &job);
	if (rc != 0)
		return rc;
	return thread_work[*kind](&job, token);
}

/* The job function of spin in Redis mode (CTP_JOB_ISOLATED): runs in a
 * worker process and, like spin_task, never looks at its token. */
static int redis_spin_job(const void *payload, size_t len, unsigned attempt,
                          ctp_output *out, ctp_token *token, void *arg)
{
	struct job job;
	int rc;

	(void)attempt;
	(void)arg;
	(void)token; /* on purpose: this job cannot be asked to stop */
	rc = payload_decode(payload, len, K_SPIN, &job);
	if (rc != 0)
		return rc;
	return spin_for(job.n, out);
}
#endif /* JOBSERVER_REDIS */

/* ---- HTTP replies ---------------------------------------------------------- */

/* Request state, from the first call of the access handler to the end. */
struct request {
	size_t len;
	bool   too_big;
	char   body[BODY_MAX + 1];
};

/* A bounded text buffer; `full` records truncation. */
struct out {
	char   s[REPLY_MAX];
	size_t n;
	bool   full;
};

__attribute__((format(printf, 2, 3)))
static void out_add(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->full)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->s + o->n, sizeof o->s - o->n, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof o->s - o->n)
		o->full = true;
	else
		o->n += (size_t)n;
}

/* Appends the len bytes at s as a JSON string (s may be NULL if len is 0). */
static void out_strn(struct out *o, const char *s, size_t len)
{
	out_add(o, "\"");
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			out_add(o, "\\%c", c);
		else if (c < 0x20)
			out_add(o, "\\u%04x", c);
		else
			out_add(o, "%c", c);
	}
	out_add(o, "\"");
}

static void out_str(struct out *o, const char *s)
{
	out_strn(o, s, strlen(s));
}

static void out_ms(struct out *o, const char *key, int64_t ms)
{
	if (ms < 0)
		out_add(o, ",\"%s\":null", key);
	else
		out_add(o, ",\"%s\":%" PRId64, key, ms);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code,
                             const struct out *o, const char *hname,
                             const char *hvalue)
{
	static const char overflow[] = "{\"error\":\"reply too long\"}\n";
	const char *body = o->full ? overflow : o->s;
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (o->full)
		code = MHD_HTTP_INTERNAL_SERVER_ERROR;
	r = MHD_create_response_from_buffer(strlen(body), (void *)body,
	                                    MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
	                            "application/json") != MHD_YES ||
	    (hname != NULL &&
	     MHD_add_response_header(r, hname, hvalue) != MHD_YES)) {
		MHD_destroy_response(r);
		return MHD_NO;
	}
	ret = MHD_queue_response(c, code, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned code,
                                   const char *msg)
{
	struct out o = { .n = 0 };

	out_add(&o, "{\"error\":");
	out_str(&o, msg);
	out_add(&o, "}\n");
	return reply(c, code, &o, NULL, NULL);
}

static enum MHD_Result reply_405(struct MHD_Connection *c, const char *allow)
{
	struct out o = { .n = 0 };

	out_add(&o, "{\"error\":\"method not allowed\"}\n");
	return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, &o, MHD_HTTP_HEADER_ALLOW,
	             allow);
}

/* ---- endpoints ------------------------------------------------------------- */

static bool form_content_type(struct MHD_Connection *c)
{
	static const char form[] = "application/x-www-form-urlencoded";
	const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
	                                             MHD_HTTP_HEADER_CONTENT_TYPE);

	if (ct == NULL)
		return true;
	return strncasecmp(ct, form, sizeof form - 1) == 0 &&
	       (ct[sizeof form - 1] == '\0' || ct[sizeof form - 1] == ';' ||
	        ct[sizeof form - 1] == ' ');
}

/* Answers a submit error: a full queue may clear up, a shutdown will not. */
static enum MHD_Result reply_submit_error(struct MHD_Connection *c, int rc)
{
	struct out o = { .n = 0 };

	if (rc == -EAGAIN) {
		out_add(&o, "{\"error\":\"queue full\"}\n");
		return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, &o, "Retry-After", "1");
	}
	if (rc == -ESHUTDOWN)
		return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
	if (rc == -ENOTSUP) /* a spin job, and --processes 0 */
		return reply_error(c, MHD_HTTP_NOT_IMPLEMENTED,
		                   "this server has no worker processes");
	return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, ctp_strerror(rc));
}

/* What Redis mode refuses of a job the local mode would take (SPEC.md,
 * "Redis mode"): the library has no priorities, no periodic jobs, and a
 * pipeline's two tasks and queue cannot span nodes. NULL or a message. */
static const char *redis_refuses(const struct job *job)
{
	if (job->kind == K_PIPELINE)
		return "kind pipeline is not available in Redis mode";
	if (job->period_ms > 0)
		return "period_ms is not available in Redis mode";
	if (job->priority != CTP_PRIORITY_NORMAL)
		return "priority other than normal is not available in Redis mode";
	return NULL;
}

#ifdef JOBSERVER_REDIS
/* ---- Redis mode: endpoints ----------------------------------------------- */

/* Answers a library error that is not the request's fault. */
static enum MHD_Result reply_cluster_error(struct MHD_Connection *c, int rc)
{
	if (rc == -ENOENT)
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no such job");
	if (rc == -ECONNREFUSED || rc == -EIO)
		return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
		                   "redis unavailable");
	return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, ctp_strerror(rc));
}

/* Stores a checked job in Redis: 202 {"id":"<id>"}. */
static enum MHD_Result post_job_redis(struct MHD_Connection *c,
                                      const struct job *job)
{
	ctp_job_opts opts = {
		/* ms <= SCHED_MS_MAX: the products fit in int64_t */
		.delay = CTP_MSEC(job->delay_ms),
		.timeout = CTP_MSEC(job->timeout_ms),
		.key = job->key,
	};
	char payload[PAYLOAD_MAX], id[CTP_JOB_ID_SIZE];
	struct out o = { .n = 0 };
	int len, rc;

	len = payload_encode(job, payload, sizeof payload);
	if (len < 0)
		return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
		                   ctp_strerror(len));
	rc = ctp_cluster_submit(server.cluster, kinds[job->kind].name, payload,
	                        (size_t)len, &opts, id);
	if (rc != 0)
		return reply_cluster_error(c, rc);
	out_add(&o, "{\"id\":");
	out_str(&o, id);
	out_add(&o, "}\n");
	return reply(c, MHD_HTTP_ACCEPTED, &o, NULL, NULL);
}

/* An ID the library could have issued: 1 to CTP_JOB_ID_SIZE - 1 characters
 * of [A-Za-z0-9_.-] (its ids are 24 hex digits). Anything else is a 400. */
static bool cluster_id_ok(const char *id)
{
	size_t len = strlen(id);

	return len > 0 && len < CTP_JOB_ID_SIZE &&
	       strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                  "0123456789_.-") == len;
}

static enum MHD_Result reply_bad_cluster_id(struct MHD_Connection *c)
{
	return reply_error(c, MHD_HTTP_BAD_REQUEST,
	                   "id must be 1 to 31 characters of [A-Za-z0-9_.-]");
}

static const char *job_state_name(int state)
{
	switch (state) {
	case CTP_JOB_QUEUED:    return "queued";
	case CTP_JOB_RUNNING:   return "running";
	case CTP_JOB_DONE:      return "done";
	case CTP_JOB_CANCELLED: return "cancelled";
	case CTP_JOB_DEAD:      return "dead";
	default:                return "unknown";
	}
}

/* GET /jobs/ID: the record in Redis, read on whichever node. */
static enum MHD_Result get_job_redis(struct MHD_Connection *c, const char *id)
{
	ctp_job_info info;
	struct out o = { .n = 0 };
	bool ended;
	int rc;

	if (!cluster_id_ok(id))
		return reply_bad_cluster_id(c);
	rc = ctp_cluster_status(server.cluster, id, &info);
	if (rc != 0)
		return reply_cluster_error(c, rc);
	ended = info.state == CTP_JOB_DONE || info.state == CTP_JOB_CANCELLED ||
	        info.state == CTP_JOB_DEAD;
	out_add(&o, "{\"id\":");
	out_str(&o, id);
	out_add(&o, ",\"state\":\"%s\"", job_state_name(info.state));
	if (ended)
		out_add(&o, ",\"status\":%d", info.status);
	else
		out_add(&o, ",\"status\":null");
	out_add(&o, ",\"attempts\":%u,\"node\":", info.attempts);
	if (info.node[0] != '\0')
		out_str(&o, info.node);
	else
		out_add(&o, "null");
	out_add(&o, ",\"output\":");
	if (info.output_len > 0)
		out_strn(&o, info.output, info.output_len < OUTPUT_SHOWN
		                          ? info.output_len : OUTPUT_SHOWN);
	else
		out_add(&o, "null");
	out_add(&o, "}\n");
	ctp_job_info_clear(&info);
	return reply(c, MHD_HTTP_OK, &o, NULL, NULL);
}

/* DELETE /jobs/ID: ctp_cluster_cancel, which reaches the job's node. */
static enum MHD_Result delete_job_redis(struct MHD_Connection *c,
                                        const char *id)
{
	struct out o = { .n = 0 };
	const char *answer;
	int rc;

	if (!cluster_id_ok(id))
		return reply_bad_cluster_id(c);
	rc = ctp_cluster_cancel(server.cluster, id);
	answer = rc == 0 ? "prevented" : rc == -EINPROGRESS ? "signalled"
	       : rc == -EALREADY ? "already_finished" : NULL;
	if (answer == NULL)
		return reply_cluster_error(c, rc);
	out_add(&o, "{\"id\":");
	out_str(&o, id);
	out_add(&o, ",\"cancel\":\"%s\"}\n", answer);
	return reply(c, MHD_HTTP_OK, &o, NULL, NULL);
}
#endif /* JOBSERVER_REDIS */

static enum MHD_Result post_job(struct request *req, struct MHD_Connection *c)
{
	const char *values[NPARAMS] = { NULL };
	char err[128];
	const char *msg;
	struct job *job;
	struct out o = { .n = 0 };
	uint64_t id;
	int rc;

	if (atomic_load(&server.stopping))
		return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
	if (req->too_big)
		return reply_error(c, MHD_HTTP_BAD_REQUEST, "body too large");
	if (!form_content_type(c))
		return reply_error(c, MHD_HTTP_BAD_REQUEST,
		                   "body must be application/x-www-form-urlencoded");
	msg = form_parse(req->body, values, server.redis_url != NULL);
	job = calloc(1, sizeof *job);
	if (job == NULL)
		return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	job->addr.sin_family = AF_INET;
	job->started_ms = job->finished_ms = -1;
	if (msg == NULL)
		msg = job_from_form(job, values, err, sizeof err);
	if (msg == NULL && server.redis_url != NULL)
		msg = redis_refuses(job);
	if (msg != NULL) {
		free(job);
		return reply_error(c, MHD_HTTP_BAD_REQUEST, msg);
	}
#ifdef JOBSERVER_REDIS
	if (server.redis_url != NULL) {
		enum MHD_Result ret = post_job_redis(c, job);

		free(job); /* the job lives in Redis */
		return ret;
	}
#endif
	job->dones_left = job->kind == K_PIPELINE ? 2 : 1;
	rc = job_submit(job);
	if (rc != 0) {
		job_abort(job);
		return reply_submit_error(c, rc);
	}
	id = map_insert(job); /* job may be gone once this returns */
	out_add(&o, "{\"id\":%" PRIu64 "}\n", id);
	return reply(c, MHD_HTTP_ACCEPTED, &o, NULL, NULL);
}

/* Parses the ID of /jobs/ID, copies its record and takes a reference to it
 * (*job; give it back with job_put). Returns 200, 400 (not a positive
 * integer), 404 (never issued, including ids too big to hold) or 410
 * (issued, and dropped since). */
static unsigned find_job(const char *text, struct job **job,
                         struct job_view *v)
{
	unsigned long long id;
	char *end;

	if (text[0] == '\0' || text[strspn(text, "0123456789")] != '\0' ||
	    text[strspn(text, "0")] == '\0')
		return MHD_HTTP_BAD_REQUEST; /* not digits only, or zero */
	errno = 0;
	id = strtoull(text, &end, 10);
	if (errno == ERANGE)
		return MHD_HTTP_NOT_FOUND; /* positive, but beyond every id */
	return map_find(id, job, v);
}

/* The error of a find_job that did not find a record. */
static enum MHD_Result reply_not_found(struct MHD_Connection *c,
                                       unsigned code)
{
	return reply_error(c, code,
	                   code == MHD_HTTP_NOT_FOUND ? "no such job"
	                   : code == MHD_HTTP_GONE ? "job record expired"
	                   : "id must be a positive integer");
}

static const char *state_name(int state)
{
	switch (state) {
	case CTP_TASK_QUEUED:    return "queued";
	case CTP_TASK_RUNNING:   return "running";
	case CTP_TASK_DONE:      return "done";
	case CTP_TASK_CANCELLED: return "cancelled";
	default:                 return "unknown";
	}
}

/* exit_signal and output: null unless the job is isolated, has a status
 * and ran (it may never have reached a process). done stores the status
 * just before it returns, and the handle answers once it has returned:
 * wait for that instant to pass. */
static void out_isolated(struct out *o, const struct job_view *v,
                         bool has_status)
{
	const void *data;
	size_t len;

	if (v->kind != K_SPIN || !has_status ||
	    ctp_task_wait(v->task, CTP_SEC(5), NULL) != 0 ||
	    ctp_task_state(v->task) != CTP_TASK_DONE ||
	    ctp_task_output(v->task, &data, &len) != 0) {
		out_add(o, ",\"exit_signal\":null,\"output\":null");
		return;
	}
	out_add(o, ",\"exit_signal\":%d,\"output\":",
	        ctp_task_exit_signal(v->task));
	out_strn(o, data, len < OUTPUT_SHOWN ? len : OUTPUT_SHOWN);
}

static enum MHD_Result get_job(struct MHD_Connection *c, const char *text)
{
	struct job_view v;
	struct job *job;
	struct out o = { .n = 0 };
	unsigned code = find_job(text, &job, &v);
	const char *state;
	bool has_status;

	if (code != MHD_HTTP_OK)
		return reply_not_found(c, code);
	/* Read after the snapshot: a status in it implies a final state. */
	state = state_name(ctp_task_state(v.task));
	has_status = v.finished_ms >= 0;
	out_add(&o, "{\"id\":%" PRIu64 ",\"kind\":\"%s\",\"state\":\"%s\"",
	        v.id, kinds[v.kind].name, state);
	if (has_status)
		out_add(&o, ",\"status\":%d", v.status);
	else
		out_add(&o, ",\"status\":null");
	if (has_status && v.status < 0) {
		out_add(&o, ",\"error\":");
		out_str(&o, ctp_strerror(v.status));
	} else {
		out_add(&o, ",\"error\":null");
	}
	out_ms(&o, "submitted_ms", v.submitted_ms);
	out_ms(&o, "started_ms", v.started_ms);
	out_ms(&o, "finished_ms", v.finished_ms);
	out_isolated(&o, &v, has_status);
	out_add(&o, ",\"priority\":\"%s\",\"delay_ms\":%" PRId64
	        ",\"period_ms\":%" PRId64, priority_name(v.priority), v.delay_ms,
	        v.period_ms);
	/* runs and last_status: a periodic job's series so far */
	if (v.period_ms == 0)
		out_add(&o, ",\"runs\":null,\"last_status\":null");
	else if (v.runs == 0)
		out_add(&o, ",\"runs\":0,\"last_status\":null");
	else
		out_add(&o, ",\"runs\":%" PRIu64 ",\"last_status\":%d", v.runs,
		        v.last_status);
	out_add(&o, "}\n");
	job_put(job); /* done with its handles */
	return reply(c, MHD_HTTP_OK, &o, NULL, NULL);
}

static bool task_started(const ctp_task *task)
{
	int state = ctp_task_state(task);

	return state == CTP_TASK_RUNNING || state == CTP_TASK_DONE;
}

/* Cancels a job. Called without the lock: done may run on this thread. */
static const char *cancel_job(const struct job_view *v)
{
	int rc;

	if (v->kind != K_PIPELINE) {
		rc = ctp_task_cancel(v->task);
		return rc == 0 ? "prevented" : rc == -EINPROGRESS ? "signalled"
		     : rc == -EALREADY ? "already_finished" : NULL;
	}
	/* The group token has no "finished" state of its own: a pipeline
	 * whose tasks have all finished answers like a finished task. */
	if (v->all_done)
		return "already_finished";
	rc = ctp_token_cancel(v->group);
	if (rc == -EALREADY)
		return "already_finished";
	if (rc != 0)
		return NULL;
	/* After the cancel no task of the group is queued any more: each one
	 * either never ran (cancelled) or had started. */
	return task_started(v->producer) || task_started(v->task)
	       ? "signalled" : "prevented";
}

static enum MHD_Result delete_job(struct MHD_Connection *c, const char *text)
{
	struct job_view v;
	struct job *job;
	struct out o = { .n = 0 };
	unsigned code = find_job(text, &job, &v);
	const char *answer;

	if (code != MHD_HTTP_OK)
		return reply_not_found(c, code);
	answer = cancel_job(&v);
	job_put(job); /* done with its handles */
	if (answer == NULL)
		return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cancel failed");
	out_add(&o, "{\"id\":%" PRIu64 ",\"cancel\":\"%s\"}\n", v.id, answer);
	return reply(c, MHD_HTTP_OK, &o, NULL, NULL);
}

static enum MHD_Result get_stats(struct MHD_Connection *c)
{
	ctp_stats st;
	struct out o = { .n = 0 };

	ctp_pool_stats(server.pool, &st);
	out_add(&o, "{\"submitted\":%" PRIu64 ",\"completed\":%" PRIu64
	        ",\"cancelled\":%" PRIu64 ",\"timed_out\":%" PRIu64
	        ",\"rejected\":%" PRIu64 ",\"dropped\":%" PRIu64
	        ",\"queued\":%" PRIu64 ",\"running\":%" PRIu64
	        ",\"threads\":%u,\"killed\":%" PRIu64 ",\"crashed\":%" PRIu64
	        ",\"processes\":%u}\n", st.submitted, st.completed, st.cancelled,
	        st.timed_out, st.rejected, st.dropped, st.queued, st.running,
	        st.threads, st.killed, st.crashed, st.processes);
	return reply(c, MHD_HTTP_OK, &o, NULL, NULL);
}

static enum MHD_Result route(struct request *req, struct MHD_Connection *c,
                             const char *url, const char *method)
{
	bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;

	if (strcmp(url, "/jobs") == 0) {
		if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
			return reply_405(c, "POST");
		return post_job(req, c);
	}
	if (strcmp(url, "/stats") == 0)
		return get ? get_stats(c) : reply_405(c, "GET");
	if (strncmp(url, "/jobs/", 6) == 0 && strchr(url + 6, '/') == NULL) {
#ifdef JOBSERVER_REDIS
		if (server.redis_url != NULL && get)
			return get_job_redis(c, url + 6);
		if (server.redis_url != NULL &&
		    strcmp(method, MHD_HTTP_METHOD_DELETE) == 0)
			return delete_job_redis(c, url + 6);
#endif
		if (get)
			return get_job(c, url + 6);
		if (strcmp(method, MHD_HTTP_METHOD_DELETE) == 0)
			return delete_job(c, url + 6);
		return reply_405(c, "GET, DELETE");
	}
	return reply_error(c, MHD_HTTP_NOT_FOUND, "no such path");
}

/* libmicrohttpd calls this once with the headers, once per chunk of body,
 * and once more at the end of the body: that last call answers. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **state)
{
	struct request *req = *state;

	(void)cls;
	(void)version;
	if (req == NULL) {
		req = calloc(1, sizeof *req);
		if (req == NULL)
			return MHD_NO; /* MHD closes the connection */
		*state = req;
		return MHD_YES;
	}
	if (*upload_size > 0) {
		/* Keep reading an oversized body to its end, then say 400. */
		if (*upload_size > BODY_MAX - req->len) {
			req->too_big = true;
		} else {
			memcpy(req->body + req->len, upload, *upload_size);
			req->len += *upload_size;
			req->body[req->len] = '\0';
		}
		*upload_size = 0;
		return MHD_YES;
	}
	return route(req, c, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode why)
{
	(void)cls;
	(void)c;
	(void)why;
	free(*state);
	*state = NULL;
}

#ifdef JOBSERVER_REDIS
/* ---- Redis mode: the node ------------------------------------------------ */

/* The serve thread: this process is a node of the cluster until
 * server.stop fires. If serve cannot start (Redis went away since the
 * connect), the server stops as if it had been sent SIGTERM: all threads
 * block it, so the signal thread takes it (or will, once started). */
static void *serve_main(void *arg)
{
	int rc;

	(void)arg;
	rc = ctp_cluster_serve(server.cluster, server.pool, server.stop);
	server.serve_rc = rc;
	if (rc != 0) {
		fprintf(stderr, "jobserver: ctp_cluster_serve: %s\n",
		        ctp_strerror(rc));
		if (!ctp_token_cancelled(server.stop) &&
		    kill(getpid(), SIGTERM) != 0)
			perror("jobserver: kill");
	}
	return NULL;
}

/* Fires the node's stop and waits for serve to return: it has let the
 * running jobs go on for --drain, shut the pool down, handed what did not
 * finish back to the other nodes, and waited for every job function.
 * Returns serve's result (0 when it was not running). */
static int stop_serving(void)
{
	int rc;

	if (!server.serving)
		return 0;
	(void)ctp_token_cancel(server.stop); /* -EALREADY is fine too */
	rc = pthread_join(server.serve_thread, NULL);
	if (rc != 0) {
		fprintf(stderr, "jobserver: pthread_join: %s\n", strerror(rc));
		abort(); /* the pool may still be in use: no way to go on */
	}
	server.serving = false;
	return server.serve_rc;
}
#endif /* JOBSERVER_REDIS */

/* ---- signals and shutdown -------------------------------------------------- */

static int print_summary(const ctp_stats *st, int64_t stop_ns)
{
	printf("summary: ran=%" PRIu64 " cancelled=%" PRIu64 " timed_out=%"
	       PRIu64 " dropped=%" PRIu64 " killed=%" PRIu64 " crashed=%" PRIu64
	       " abandoned=%" PRIu64 " stop_ms=%" PRId64 "\n", st->completed,
	       st->cancelled, st->timed_out, st->dropped, st->killed,
	       st->crashed, st->running, stop_ns / 1000000);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		perror("jobserver: stdout");
		return -EIO;
	}
	return 0;
}

/* The dedicated signal thread: waits for SIGTERM/SIGINT, then runs the
 * shutdown sequence of SPEC.md and leaves the exit code in server. */
static void *signal_main(void *arg)
{
	ctp_stats st;
	int64_t t0, t1;
	int sig, rc, serve_rc = 0;

	(void)arg;
	rc = sigwait(&server.signals, &sig);
	if (rc != 0)
		fprintf(stderr, "jobserver: sigwait: %s\n", strerror(rc));
	t0 = now_ns();
	atomic_store(&server.stopping, true);
#ifdef JOBSERVER_REDIS
	/* Redis mode: serve shuts the pool down; the call below then only
	 * returns its result (or shuts it down if serve never started). */
	serve_rc = stop_serving();
#endif
	rc = ctp_pool_shutdown(server.pool, server.drain_ns, server.grace_ns);
	t1 = now_ns();
	/* At once: stats.running now is what the grace abandoned. */
	ctp_pool_stats(server.pool, &st);
	/* Before anything is freed: no HTTP thread may touch the pool or a
	 * record afterwards. */
	MHD_stop_daemon(server.daemon);
	server.daemon = NULL;
	if (rc != 0 && rc != -ETIMEDOUT)
		fprintf(stderr, "jobserver: ctp_pool_shutdown: %s\n",
		        ctp_strerror(rc));
	server.exit_code = rc == -ETIMEDOUT ? 3 : rc == 0 ? 0 : 1;
	if (serve_rc != 0 && server.exit_code == 0)
		server.exit_code = 1;
	if (print_summary(&st, t1 - t0) != 0 && server.exit_code == 0)
		server.exit_code = 1;
	return NULL;
}

/* ---- command line ----------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: jobserver [--listen IPV4:PORT] [--threads N] "
	        "[--queue N] [--drain SECONDS] [--grace SECONDS]\n"
	        "                 [--processes N] [--kill-after SECONDS] "
	        "[--retain SECONDS] [--max-records N]\n"
	        "                 [--http-threads N]\n"
	        "                 [--redis URL [--node NAME] "
	        "[--claim-after SECONDS]]\n"
	        "defaults: --listen 127.0.0.1:8080 --threads 4 --queue 64 "
	        "--drain 5 --grace 2 --processes 2 --kill-after 1\n"
	        "          --retain 300 --max-records 100000 --http-threads 2\n"
	        "          (--redis: --node <host>-<pid> --claim-after 30)\n");
}

static bool parse_seconds(const char *s, int64_t *ns)
{
	char *end;
	double v;

	if ((s[0] < '0' || s[0] > '9') && s[0] != '.')
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 ||
	    v > MAX_SECONDS)
		return false;
	*ns = (int64_t)(v * 1e9 + 0.5); /* v <= MAX_SECONDS: no overflow */
	return true;
}

static bool parse_listen(const char *s, struct sockaddr_in *addr)
{
	char host[INET_ADDRSTRLEN];
	const char *colon = strrchr(s, ':');
	int64_t port;

	if (colon == NULL || (size_t)(colon - s) >= sizeof host)
		return false;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	memset(addr, 0, sizeof *addr);
	addr->sin_family = AF_INET;
	if (inet_pton(AF_INET, host, &addr->sin_addr) != 1 ||
	    !parse_int(colon + 1, 0, 65535, &port))
		return false;
	addr->sin_port = htons((uint16_t)port);
	return true;
}

/* A duration in seconds that must be above zero (once in nanoseconds). */
static bool parse_positive_seconds(const char *s, int64_t *ns)
{
	return parse_seconds(s, ns) && *ns > 0;
}

/* A node name the library takes: 1 to 63 bytes of [A-Za-z0-9_.-]. */
static bool parse_node(const char *s)
{
	size_t len = strlen(s);

	return len > 0 && len < 64 &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                 "0123456789_.-") == len;
}

/* What the Redis options need: --redis, and a build with Redis support.
 * Returns 0 or -1 after printing what is wrong. */
static int check_redis_options(void)
{
#ifndef JOBSERVER_REDIS
	if (server.redis_url != NULL) {
		fprintf(stderr, "jobserver: --redis: this jobserver was built "
		        "without Redis support (hiredis was not found)\n");
		return -1;
	}
#endif
	if (server.redis_url == NULL &&
	    (server.node != NULL || server.claim_after_ns != 0)) {
		fprintf(stderr, "jobserver: --node and --claim-after need "
		        "--redis\n");
		return -1;
	}
	if (server.redis_url != NULL && server.claim_after_ns == 0)
		server.claim_after_ns = CTP_SEC(30);
	return 0;
}

/* Returns 0, 1 for --help, or -1 after printing what is wrong. */
static int parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "listen",     required_argument, NULL, 'l' },
		{ "threads",    required_argument, NULL, 't' },
		{ "queue",      required_argument, NULL, 'q' },
		{ "drain",      required_argument, NULL, 'd' },
		{ "grace",      required_argument, NULL, 'g' },
		{ "processes",  required_argument, NULL, 'p' },
		{ "kill-after", required_argument, NULL, 'k' },
		{ "retain",     required_argument, NULL, 'r' },
		{ "max-records", required_argument, NULL, 'm' },
		{ "http-threads", required_argument, NULL, 'H' },
		{ "redis",      required_argument, NULL, 'R' },
		{ "node",       required_argument, NULL, 'N' },
		{ "claim-after", required_argument, NULL, 'C' },
		{ "help",       no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int64_t v;
	int opt;

	while ((opt = getopt_long(argc, argv, "l:t:q:d:g:p:k:r:m:H:h", longopts,
	                          NULL)) != -1) {
		bool ok;

		switch (opt) {
		case 'l': ok = parse_listen(optarg, &server.listen); break;
		case 't': ok = parse_int(optarg, 1, CTP_MAX_THREADS, &v);
		          server.threads = (unsigned)v; break;
		case 'q': ok = parse_int(optarg, 1, (int64_t)CTP_MAX_CAPACITY, &v);
		          server.queue = (size_t)v; break;
		case 'd': ok = parse_seconds(optarg, &server.drain_ns); break;
		case 'g': ok = parse_seconds(optarg, &server.grace_ns); break;
		case 'p': ok = parse_int(optarg, 0, CTP_MAX_PROCESSES, &v);
		          server.processes = (unsigned)v; break;
		case 'k': ok = parse_positive_seconds(optarg,
		                                      &server.kill_after_ns);
		          break;
		case 'r': ok = parse_seconds(optarg, &server.retain_ns); break;
		case 'm': ok = parse_int(optarg, 0, MAX_RECORDS, &v);
		          server.max_records = (size_t)v; break;
		case 'H': ok = parse_int(optarg, 1, HTTP_THREADS_MAX, &v);
		          server.http_threads = (unsigned)v; break;
		case 'R': ok = true; /* the library checks it at the connect */
		          server.redis_url = optarg; break;
		case 'N': ok = parse_node(optarg); server.node = optarg; break;
		case 'C': ok = parse_seconds(optarg, &server.claim_after_ns) &&
		               server.claim_after_ns >= CLAIM_MIN;
		          break;
		case 'h': usage(stdout); return 1;
		default:  usage(stderr); return -1;
		}
		if (!ok) {
			const struct option *o = longopts;

			while (o->val != opt)
				o++;
			fprintf(stderr, "jobserver: bad value for --%s: '%s'\n",
			        o->name, optarg);
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "jobserver: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return check_redis_options();
}

/* ---- startup ------------------------------------------------------------------ */

/* Blocks the shutdown signals in this thread, and so in every thread it
 * creates from now on; SIGPIPE is ignored so a vanished client cannot kill
 * the process. */
static int setup_signals(void)
{
	struct sigaction ign = { .sa_handler = SIG_IGN };
	int rc;

	if (sigemptyset(&server.signals) != 0 ||
	    sigaddset(&server.signals, SIGTERM) != 0 ||
	    sigaddset(&server.signals, SIGINT) != 0 ||
	    sigemptyset(&ign.sa_mask) != 0 ||
	    sigaction(SIGPIPE, &ign, NULL) != 0) {
		perror("jobserver: signals");
		return -1;
	}
	rc = pthread_sigmask(SIG_BLOCK, &server.signals, NULL);
	if (rc != 0) {
		fprintf(stderr, "jobserver: pthread_sigmask: %s\n", strerror(rc));
		return -1;
	}
	return 0;
}

/* Called before any other thread exists: with --processes > 0 it forks
 * the fork server, a copy of the program as it is now. */
static int start_pool(void)
{
	ctp_pool_opts opts = {
		.threads = server.threads,
		.queue_capacity = server.queue,
		.name = "job",
		.processes = server.processes,
		.kill_after = server.kill_after_ns,
	};
	int rc = ctp_pool_create(&server.pool, &opts);

	if (rc != 0)
		fprintf(stderr, "jobserver: ctp_pool_create: %s\n", ctp_strerror(rc));
	return rc;
}

#ifdef JOBSERVER_REDIS
/* Connects to Redis as a node, registers the kinds and starts the serve
 * thread. Called by main after start_pool (the fork server copies a
 * program of one thread: hiredis starts none, and this order keeps the
 * rule whatever it does) and before the HTTP daemon. Returns 0; 2 for a
 * URL the library refuses (a bad option); 1 for any other failure. */
static int start_node(void)
{
	ctp_cluster_opts opts = {
		.url = server.redis_url,
		.node = server.node,
		.claim_after = server.claim_after_ns,
		/* The library reads 0 as its defaults (24 h, 10 s): --retain 0
		 * becomes its smallest TTL, 1 ms; --drain 0 becomes 1 ns. */
		.result_ttl = server.retain_ns < CTP_MSEC(1) ? CTP_MSEC(1)
		                                             : server.retain_ns,
		.drain = server.drain_ns > 0 ? server.drain_ns : 1,
	};
	int rc;

	rc = ctp_cluster_connect(&server.cluster, &opts);
	if (rc == -EINVAL) {
		fprintf(stderr, "jobserver: bad value for --redis: '%s'\n",
		        server.redis_url);
		return 2;
	}
	if (rc != 0) {
		fprintf(stderr, "jobserver: cannot connect to Redis at %s: %s\n",
		        server.redis_url, rc == -EPROTO
		        ? "not a Redis 6.2 or later" : ctp_strerror(rc));
		return 1;
	}
	for (int k = 0; k < NKINDS && rc == 0; k++) {
		if (thread_work[k] != NULL)
			rc = ctp_cluster_register(server.cluster, kinds[k].name,
			                          redis_thread_job,
			                          (void *)&redis_kinds[k], 0);
	}
	/* serve refuses an isolated kind on a pool without processes */
	if (rc == 0 && server.processes > 0)
		rc = ctp_cluster_register(server.cluster, kinds[K_SPIN].name,
		                          redis_spin_job, NULL, CTP_JOB_ISOLATED);
	if (rc == 0)
		rc = ctp_token_create(&server.stop, NULL);
	if (rc == 0)
		rc = -pthread_create(&server.serve_thread, NULL, serve_main, NULL);
	if (rc != 0) {
		fprintf(stderr, "jobserver: starting the node: %s\n",
		        ctp_strerror(rc));
		return 1;
	}
	server.serving = true;
	return 0;
}
#endif /* JOBSERVER_REDIS */

/* Starts the daemon and prints the listening line with the real port:
 * epoll, with --http-threads threads that each serve many connections (see
 * "HTTP threads" above: no handler may wait). */
static int start_http(void)
{
	const union MHD_DaemonInfo *info;
	char host[INET_ADDRSTRLEN];

	server.daemon = MHD_start_daemon(
		MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG,
		ntohs(server.listen.sin_port), NULL, NULL, on_request, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&server.listen,
		MHD_OPTION_THREAD_POOL_SIZE, server.http_threads,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
		MHD_OPTION_END);
	if (server.daemon == NULL) {
		fprintf(stderr, "jobserver: cannot listen on the given address\n");
		return -1;
	}
	info = MHD_get_daemon_info(server.daemon, MHD_DAEMON_INFO_BIND_PORT);
	if (info == NULL ||
	    inet_ntop(AF_INET, &server.listen.sin_addr, host, sizeof host) == NULL) {
		fprintf(stderr, "jobserver: cannot read the listening port\n");
		return -1;
	}
	printf("listening on %s:%u\n", host, (unsigned)info->port);
	if (fflush(stdout) != 0) {
		perror("jobserver: stdout");
		return -1;
	}
	return 0;
}

/* Frees what remains after a clean shutdown, in dependency order: the
 * daemon is already stopped, so no handler can reach a record. */
static void cleanup(void)
{
	int rc;

	if (server.daemon != NULL) {
		MHD_stop_daemon(server.daemon);
		server.daemon = NULL;
	}
#ifdef JOBSERVER_REDIS
	(void)stop_serving(); /* still serving when the daemon did not start */
#endif
	map_free();
	rc = ctp_pool_destroy(server.pool);
	if (rc != 0)
		fprintf(stderr, "jobserver: ctp_pool_destroy: %s\n", ctp_strerror(rc));
	server.pool = NULL;
#ifdef JOBSERVER_REDIS
	ctp_cluster_close(server.cluster); /* serve has returned */
	server.cluster = NULL;
	ctp_token_release(server.stop);
	server.stop = NULL;
#endif
	rc = pthread_mutex_destroy(&server.lock);
	if (rc != 0)
		fprintf(stderr, "jobserver: pthread_mutex_destroy: %s\n",
		        strerror(rc));
}

int main(int argc, char **argv)
{
	pthread_t sig_thread;
	int rc;

	server.threads = 4;
	server.queue = 64;
	server.drain_ns = CTP_SEC(5);
	server.grace_ns = CTP_SEC(2);
	server.processes = 2;
	server.kill_after_ns = CTP_SEC(1);
	server.retain_ns = CTP_SEC(300);
	server.max_records = 100000;
	server.http_threads = 2;
	if (!parse_listen("127.0.0.1:8080", &server.listen))
		return 1;
	rc = parse_options(argc, argv);
	if (rc != 0)
		return rc > 0 ? 0 : 2;
	server.start_ns = now_ns();
	/* Before any thread exists: the pool's and MHD's inherit the mask,
	 * and the pool's fork server copies a one-thread program. */
	if (map_init() != 0) {
		fprintf(stderr, "jobserver: out of memory\n");
		return 1;
	}
	if (setup_signals() != 0 || start_pool() != 0) {
		map_free();
		return 1;
	}
#ifdef JOBSERVER_REDIS
	if (server.redis_url != NULL) {
		rc = start_node();
		if (rc != 0) {
			cleanup();
			return rc;
		}
	}
#endif
	if (start_http() != 0) {
		cleanup();
		return 1;
	}
	rc = pthread_create(&sig_thread, NULL, signal_main, NULL);
	if (rc == 0)
		rc = pthread_join(sig_thread, NULL);
	if (rc != 0) {
		fprintf(stderr, "jobserver: signal thread: %s\n", strerror(rc));
		cleanup();
		return 1;
	}
	/* Abandoned tasks may still use their records, queues and the pool:
	 * leave them, reachable from `server`, to the end of the process. */
	if (server.exit_code != 3)
		cleanup();
	return server.exit_code;
}
