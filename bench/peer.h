/*
 * peer.h: the one interface every library under comparison implements.
 *
 * The benchmark driver (bench/driver.c) is built once per library, linked
 * with exactly one adapter file (bench/peer_<name>.c or .cc) that defines
 * bench_peer_get(). Each executable therefore loads one library only, and
 * the run script starts a fresh process for every (peer, scenario,
 * repetition), so no process-wide state (GLib's unused-thread pool, libuv's
 * global threadpool, oneTBB's arena) carries over between measurements.
 *
 * Rules for adapters:
 * - Write the code a user of that library writes: its documented API, its
 *   usual idiom. Where the library has no such operation, leave the hook
 *   NULL: the driver prints the figure as skipped with the `why` string.
 * - The driver owns the job bodies (struct bench_item) and all timing; an
 *   adapter only wraps. A job must run exactly once unless it was
 *   cancelled; the driver counts runs itself and fails on a lost or
 *   duplicated job.
 * - Any thread-safety rule the library imposes (libuv: uv_queue_work only on
 *   the loop's thread) is the adapter's job, through producer_begin/end.
 * - Adapters never print to stdout (the driver's lines are parsed); stderr
 *   is fine for errors.
 */
#ifndef CTP_BENCH_PEER_H
#define CTP_BENCH_PEER_H

#include <semaphore.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A job, owned by the driver: the adapter passes the pointer through the
 * library as the task's one argument and runs it as item->run(item). Every
 * library can carry one pointer without allocating, so no adapter needs a
 * wrapper object per job. The driver embeds this as the first member of its
 * own per-job structs. */
struct bench_item {
	void (*run)(struct bench_item *self);
};

/* How a busy task waits (scenario "busy stop"). ctpool implements its three
 * cancellable waits through the hooks below; every other peer leaves them
 * NULL and gets BENCH_WAIT_FLAG, the pattern its users write, from the
 * driver: jobs that loop { if (stop flag set) return; sleep 10 ms; },
 * submitted with submit() and stopped by raising the flag, then shutdown(). */
enum bench_wait {
	BENCH_WAIT_FLAG  = 0, /* peers: check a flag, sleep 10 ms, repeat */
	BENCH_WAIT_SLEEP = 1, /* ctpool: ctp_token_sleep(token, 10 s) */
	BENCH_WAIT_POLL  = 2, /* ctpool: poll() on ctp_token_fd, 10 s */
	BENCH_WAIT_QUEUE = 3, /* ctpool: ctp_queue_pop on an empty queue, 10 s */
};

struct bench_peer {
	const char *name;     /* "ctpool", "glib", "libuv", "textbook", ... */
	const char *version;  /* library version string, for the CSV */
	int joins_threads;    /* 1 when shutdown() joins every thread the pool
	                         started; 0 when the library cannot (GLib keeps
	                         them as unused threads, libuv's pool is
	                         process-wide). The driver reports threads
	                         still alive 100 ms after shutdown either way. */

	/* A pool of `workers` threads that can hold at least `capacity` queued
	 * jobs (an unbounded library ignores it). Every worker should exist
	 * when it returns if the library allows that. NULL on failure. */
	void *(*create)(unsigned workers, size_t capacity);

	/* Per submitting thread: called on that thread before its first
	 * submit and after its last one. NULL when not needed. producer_end
	 * may block until that producer's jobs have finished (libuv runs its
	 * loop there). */
	void *(*producer_begin)(void *pool);
	void  (*producer_end)(void *pool, void *producer);

	/* Runs item->run(item) exactly once on a worker. Must not fail for lack of
	 * room: block or grow. `producer` is what producer_begin returned on
	 * this thread, or NULL: NULL means the thread that called create()
	 * (the driver's main thread), which needs no producer_begin. Every
	 * other hook (submit_handle, submit_group, cancel, wait_idle, ...) is
	 * only called from that main thread, except submit_group in
	 * `throughput --into group` (below). 0 or -1. */
	int (*submit)(void *pool, void *producer, struct bench_item *item);

	/* Returns once every job submitted so far has finished (called after
	 * every producer_end). */
	void (*wait_idle)(void *pool);

	/* Stops the pool and frees it: returns once the jobs already running
	 * have returned, and once every worker thread it started is joined
	 * (when joins_threads), otherwise as soon as the library's own shutdown
	 * call returns. Queued jobs may be dropped.
	 * Timed in the idle-shutdown and busy-stop scenarios. */
	void (*shutdown)(void *pool);

	/* Busy stop with the library's own waits (ctpool; NULL for the other
	 * peers: see enum bench_wait). start_waiters starts n jobs that each
	 * sem_post(inside) right before they wait in the given way, then wait
	 * until the stop. 0, or -1 when this peer does not have that wait (then
	 * the figure is skipped). */
	int (*start_waiters)(void *pool, unsigned n, enum bench_wait how,
	                     sem_t *inside);
	/* Busy stop, timed: asks the waiters to stop (ctpool: its shutdown
	 * fires their tokens) and returns once they have all returned and every
	 * thread is joined (as shutdown()). Frees the pool. The driver checks
	 * the waiters' results through waiters_failed(). */
	void (*stop_waiters)(void *pool);
	/* After stop_waiters: how many waiters woke for any reason other than
	 * the stop (a timeout, an error). Must be 0 for a valid run. */
	unsigned (*waiters_failed)(void);

	/* Cancel by handle. submit_handle is submit() (from the main thread) that also
	 * returns a handle; cancel() returns 1 when the job will never run, 0 when it is
	 * too late (started or done); release() frees the handle (after cancel
	 * or after the job finished). NULL when the library has no per-job
	 * cancel (then see why_no_cancel). */
	void *(*submit_handle)(void *pool, struct bench_item *item);
	int   (*cancel)(void *pool, void *handle);
	void  (*release)(void *pool, void *handle);

	/* Cancel by group: jobs submitted into a group are all cancelled by one
	 * call. cancel_group returns when none of the group's queued jobs can
	 * start any more. NULL when the library has no group cancel.
	 * submit_group must be safe to call from several producer threads at
	 * once on the same group (throughput --into group: each producer
	 * thread calls it, after its producer_begin, in place of submit). */
	void *(*group_create)(void *pool);
	int   (*submit_group)(void *pool, void *group, struct bench_item *item);
	void  (*cancel_group)(void *pool, void *group);
	void  (*group_destroy)(void *pool, void *group); /* after wait_idle */

	/* One line each: why a NULL hook above is NULL (printed with the
	 * skipped figure). NULL when nothing is missing. */
	const char *why_no_cancel;
	const char *why_no_group;
	/* Non-NULL when the driver's malloc interposer cannot see this
	 * library's allocations (its own allocator): then the memory figures
	 * are skipped with this reason instead of reporting a false 0. */
	const char *why_no_alloc_count;
};

/* Defined by exactly one adapter file per executable. */
const struct bench_peer *bench_peer_get(void);

#ifdef __cplusplus
}
#endif

#endif /* CTP_BENCH_PEER_H */
