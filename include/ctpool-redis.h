/*
 * ctpool-redis: background jobs on Redis Streams, with cancel by id from any
 * process and nothing lost when a node dies.
 *
 * This header is the contract of libctpool-redis (DISTRIBUTED.md in the
 * shared docs); pkg-config name "ctpool-redis". It builds on ctpool (a node
 * runs its jobs on a ctp_pool) and on hiredis; ctpool itself does not depend
 * on hiredis. The conventions of ctpool.h hold: negative errno, durations in
 * int64_t nanoseconds (CTP_FOREVER where it says so), all-zero options are
 * the defaults, NULL where an object is needed is -EINVAL.
 *
 * What is stored in Redis, under the namespace ns ("ctp" by default):
 *   <ns>:job:<id>     the job's record (a hash): kind, state, status,
 *                     attempts, node, payload, output; it expires
 *                     result_ttl after the job ended, never before
 *   <ns>:q:<kind>     one stream per kind, consumer group "nodes"; an entry
 *                     names a job that may start now
 *   <ns>:delayed:<kind>  jobs with a delay (sorted by the time they are due)
 *   <ns>:key:<key>    an idempotency key -> the job's id (expires with it)
 *   <ns>:dead         dead-lettered jobs (a stream of id and kind)
 * and the channels <ns>:cancel (a running job's cancel), <ns>:wake (a
 * delayed job was submitted) and <ns>:end:<id> (the job reached an end).
 *
 * Durability is Redis's: with AOF and appendfsync always, a redis-server
 * that dies and restarts has lost nothing it acknowledged (no submission,
 * no start, no end). With appendfsync everysec (Redis's default for AOF)
 * a crash may forget the last second's writes: an acknowledged submission
 * may be gone, and a job whose start was forgotten runs again.
 *
 * Threads: a ctp_cluster may be used from any number of threads at once
 * (its commands share one connection under a lock); ctp_cluster_serve runs
 * on the calling thread until its stop token fires, at most one per cluster.
 */
#ifndef CTPOOL_REDIS_H
#define CTPOOL_REDIS_H

#include <ctpool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ctp_cluster ctp_cluster;

typedef struct ctp_cluster_opts {
	const char *url;          /* "redis://host:port[/db]" or
	                             "unix:/path/to/socket";
	                             NULL = "redis://127.0.0.1:6379" */
	const char *ns;           /* key namespace, "<ns>:..."; NULL = "ctp";
	                             at most 64 bytes of [A-Za-z0-9_.-] */
	const char *node;         /* this process's name; NULL = "<host>-<pid>";
	                             1 to 63 bytes of [A-Za-z0-9_.-] */
	int64_t     claim_after;  /* a job whose node sent no heartbeat for this
	                             long is delivered again; 0 = 30 s; at least
	                             10 ms */
	unsigned    max_deliveries; /* deliveries before a job is dead-lettered;
	                             0 = 5 */
	int64_t     result_ttl;   /* how long a finished job's record stays;
	                             0 = 24 h; a job that has not ended never
	                             expires; at least 1 ms */
	int64_t     drain;        /* on a graceful stop, how long running jobs
	                             may go on before their tokens fire;
	                             0 = 10 s; CTP_FOREVER = no limit */
} ctp_cluster_opts;

#define CTP_JOB_ID_SIZE 32     /* with the terminating NUL */

/* Largest payload of a job (more is -EMSGSIZE), and largest output kept of
 * one (what a job writes past it is cut, and ctp_output_write answers
 * -EMSGSIZE). */
#define CTP_JOB_MAX_PAYLOAD ((size_t)64 << 20)

typedef struct ctp_job_opts {
	int64_t     delay;        /* ns before the job may start; 0 = at once */
	int64_t     timeout;      /* ns after submission when its token fires
	                             with -ETIMEDOUT; 0 = none */
	const char *key;          /* idempotency key: a second submit with the
	                             same key while the first is known returns
	                             the first's id; NULL = none; at most 256
	                             bytes, not empty */
} ctp_job_opts;

/* ctp_job_info.state */
#define CTP_JOB_QUEUED    1   /* accepted, not started (or delayed) */
#define CTP_JOB_RUNNING   2   /* a node runs it (node, attempts say which) */
#define CTP_JOB_DONE      3   /* its function returned; status is its value */
#define CTP_JOB_CANCELLED 4   /* never ran to an end: status -ECANCELED, or
                                 -ETIMEDOUT (its timeout passed first) */
#define CTP_JOB_DEAD      5   /* delivered max_deliveries times without an
                                 end (its nodes died): status -EOWNERDEAD */

typedef struct ctp_job_info {
	int         state;        /* CTP_JOB_QUEUED, _RUNNING, _DONE,
	                             _CANCELLED, _DEAD */
	int         status;       /* fn's return value, or why it never ran */
	unsigned    attempts;     /* deliveries so far */
	char        node[64];     /* node that ran or runs it; "" if none */
	void       *output;       /* bytes the job wrote (malloc'd); NULL when
	                             output_len is 0 */
	size_t      output_len;
} ctp_job_info;

/* A job function. Runs on a worker of the node's pool (or, with
 * CTP_JOB_ISOLATED, in a worker process of it). payload/len: the submitted
 * bytes (payload is NULL when len is 0); attempt: 1 on the first delivery;
 * out: what it writes with ctp_output_write becomes the job's output; token
 * fires with -ECANCELED (ctp_cluster_cancel, from any process), -ETIMEDOUT
 * (the job's timeout) or -ESHUTDOWN (the node's graceful stop ran past
 * drain). The return value becomes the job's status. */
typedef int (*ctp_job_fn)(const void *payload, size_t len, unsigned attempt,
                          ctp_output *out, ctp_token *token, void *arg);

/* Checks the options and connects (one connection, made now). Returns 0
 * and *cluster; -EINVAL (cluster NULL, a bad URL, namespace or node name, a
 * bad duration); -ECONNREFUSED when Redis cannot be reached; -EPROTO when
 * the server is not a Redis 6.2 or later; -ENOMEM. */
CTP_EXPORT int ctp_cluster_connect(ctp_cluster **cluster,
                                   const ctp_cluster_opts *opts);

/* Closes the connections and frees the cluster. Must not race another call
 * on it (a serve must have returned). NULL is a no-op. */
CTP_EXPORT void ctp_cluster_close(ctp_cluster *cluster);

/* ---- any process -------------------------------------------------------- */

/* Stores the job (its record, and its stream entry or its place among the
 * delayed jobs, in one atomic script: a job is never half-stored) and
 * returns 0 and its id (a NUL-terminated string shorter than
 * CTP_JOB_ID_SIZE). With opts->key already used by a job whose record still
 * exists it returns 0 and that job's id, whatever its state. Errors:
 * -EINVAL (cluster or id NULL; kind NULL, empty, over 64 bytes or with
 * characters other than [A-Za-z0-9_.-]; payload NULL with len > 0; a
 * negative delay or timeout; a bad key), -EMSGSIZE (len over
 * CTP_JOB_MAX_PAYLOAD), -ECONNREFUSED when Redis cannot be reached (after
 * reconnects with backoff for about 3.6 s; nothing stored), -EIO when the
 * connection failed after the job was sent and no retry got an answer:
 * then id holds the job's id and the job may have been stored (the one
 * case where a failed submit is not "nothing stored": ctp_cluster_status
 * of that id tells, once Redis is back). A retry after a lost reply
 * reuses the same id, so one call never stores the job twice. A job of a
 * kind no node has registered waits until one does. */
CTP_EXPORT int ctp_cluster_submit(ctp_cluster *cluster, const char *kind,
                                  const void *payload, size_t len,
                                  const ctp_job_opts *opts,
                                  char id[CTP_JOB_ID_SIZE]);

/* Cancels a job by id. 0 when it had not started (it never will, on any
 * node; its state is CTP_JOB_CANCELLED, status -ECANCELED); -EINPROGRESS
 * when it runs (the cancel is stored in its record, then announced: its
 * token fires on its node, also on a node that was away and comes back;
 * its state becomes DONE with whatever its function returns, or CANCELLED,
 * -ECANCELED, when the node had taken it but its function had not started
 * yet, or when its node died or stopped before it ended); -EALREADY
 * when it had finished or was cancelled (by another call: this call's own
 * retry after a lost reply answers what its first try did); -ENOENT for an
 * unknown or expired id; -EINVAL; -ECONNREFUSED / -EIO. */
CTP_EXPORT int ctp_cluster_cancel(ctp_cluster *cluster, const char *id);

/* Fills *info (free its output with ctp_job_info_clear). 0; -ENOENT for an
 * unknown or expired id; -EINVAL; -ECONNREFUSED / -EIO. A job whose timeout
 * has passed before it started reads CTP_JOB_CANCELLED, -ETIMEDOUT. */
CTP_EXPORT int ctp_cluster_status(ctp_cluster *cluster, const char *id,
                                  ctp_job_info *info);

/* Waits until the job has reached an end (DONE, CANCELLED, DEAD) or
 * timeout passed (-ETIMEDOUT; CTP_FOREVER: no limit), without polling:
 * it subscribes to the job's end (a connection of its own for the call).
 * Fills *info like ctp_cluster_status (info may be NULL). -ENOENT at once
 * for an unknown or expired id; -EINVAL. While Redis is away it waits for
 * it (reconnecting with backoff, 10 ms doubling to 1 s), within timeout:
 * a Redis that never comes back ends the wait with -ETIMEDOUT, like a job
 * that never ends. */
CTP_EXPORT int ctp_cluster_wait(ctp_cluster *cluster, const char *id,
                                int64_t timeout, ctp_job_info *info);

/* Frees info->output and zeroes *info. NULL is a no-op. */
CTP_EXPORT void ctp_job_info_clear(ctp_job_info *info);

/* ---- a node ------------------------------------------------------------- */

#define CTP_JOB_ISOLATED 1u    /* run it as an isolated task (ctpool.h):
                                  the pool needs worker processes, and fn
                                  and arg must be valid in the pool's
                                  process copy (made when the pool was
                                  created) */

/* Names the function for a kind on this node; before serve. Returns 0;
 * -EINVAL (a bad kind, fn NULL, an unknown flag); -EEXIST (the kind is
 * registered already); -ENOSPC (64 kinds are); -EBUSY (serve runs);
 * -ENOMEM. A node with an isolated kind takes a job of it only while one
 * of the pool's worker processes has no job of this node. */
CTP_EXPORT int ctp_cluster_register(ctp_cluster *cluster, const char *kind,
                                    ctp_job_fn fn, void *arg, unsigned flags);

/* Runs the node on pool until stop fires. It takes only as many jobs as the
 * pool has free workers (min(threads, processes) for isolated jobs), so a
 * busy node leaves waiting jobs to idle ones; it sends heartbeats for the
 * jobs it runs every claim_after / 4, takes over jobs of nodes whose
 * heartbeats stopped for claim_after, makes due delayed jobs startable, and
 * fires the token of a job of its own that is cancelled from anywhere.
 * Every write about a job is fenced by its attempt: a node that comes back
 * after its job was delivered again changes nothing of the record (its
 * late result is dropped, the job's token fires with -ECANCELED there).
 * When Redis goes away it reconnects with backoff (10 ms doubling to 1 s);
 * running jobs go on, and their results are written once it is back. After
 * a reconnect it takes over other nodes' jobs only once claim_after has
 * passed (no node could send heartbeats while Redis was away).
 *
 * When stop fires it reads no more jobs (one delivered after that is handed
 * back unstarted), lets running jobs go on for up to drain, then shuts the
 * pool down (ctp_pool_shutdown: their tokens fire with -ESHUTDOWN), hands
 * back at once every job it took but did not finish (other nodes may start
 * them right away; the delivery counts as an attempt; a job whose cancel
 * is stored ends CANCELLED, -ECANCELED, instead), waits for every job
 * function to return (isolated ones are killed at once: the shutdown's
 * grace is 0), leaves nothing pending under its name (unless Redis stays
 * away through about 6 s of reconnects: then claim_after gives what is left
 * to other nodes), and returns 0. A job whose run was cut short by the stop
 * is handed back, never recorded DONE; one whose function had returned
 * before is recorded as it ended. (An isolated job's function that returns
 * -ESHUTDOWN counts as cut short: the parent cannot tell it from a run the
 * stop cut.)
 * The pool is shut down on return: destroy it.
 *
 * Errors (at once, nothing done): -EINVAL (NULL, no kind registered);
 * -EBUSY (a serve runs); -ENOTSUP (an isolated kind on a pool without
 * worker processes); -ECONNREFUSED when Redis cannot be reached at the
 * start. */
CTP_EXPORT int ctp_cluster_serve(ctp_cluster *cluster, ctp_pool *pool,
                                 ctp_token *stop);

#ifdef __cplusplus
}
#endif

#endif /* CTPOOL_REDIS_H */
