/*
 * sched_peer.h: the interface every library under comparison implements for
 * the scheduling benchmark (bench/sched_driver.c): delayed tasks, their
 * cancellation, and priorities.
 *
 * As for bench/peer.h: the driver is built once per library, linked with
 * exactly one adapter (bench/sched_peer_<name>.c or .cc), and
 * scripts/bench.sh starts a fresh process for every (peer, scenario,
 * repetition). The "floor" adapter is not a library: it is what the kernel
 * gives without any pool (clock_nanosleep for a delay, one condition
 * variable wake for a hand-over), so the other figures can be read.
 *
 * Rules for adapters:
 * - Write the code a user of that library writes to run a task later on a
 *   pool: its documented timer and its thread pool, the usual idiom. Where
 *   the library has no such operation, leave the hook NULL and say why: the
 *   driver prints "n/a", never a number.
 * - A delayed task must never start before its delay has passed, counted
 *   from the call: the driver checks every start against its own clock read
 *   before the call. A library with millisecond timers rounds up.
 * - The driver owns the items and every clock; adapters never print to
 *   stdout (stderr is fine for errors).
 */
#ifndef CTP_BENCH_SCHED_PEER_H
#define CTP_BENCH_SCHED_PEER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum sched_priority {
	SCHED_PRIO_LOW = -1,
	SCHED_PRIO_NORMAL = 0,
	SCHED_PRIO_HIGH = 1,
};

/* A task, owned by the driver; the adapter passes the pointer through the
 * library. Exactly one of run (on a worker) and cancelled (on any thread,
 * once the library has said the task will never run) is called, once. */
struct sched_item {
	void (*run)(struct sched_item *self);
	void (*cancelled)(struct sched_item *self);
	int  priority; /* enum sched_priority; adapters with priorities read it */
};

struct sched_peer {
	const char *name;    /* "ctpool", "textbook", "glib", ... */
	const char *version; /* library version, for the report */

	/* A pool of `workers` threads, plus whatever timer thread the library
	 * needs, that can hold `capacity` tasks (waiting or delayed). With
	 * `priorities`, submit honours item->priority (only called when
	 * why_no_priority is NULL). NULL on failure. */
	void *(*create)(unsigned workers, size_t capacity, int priorities);
	/* Stops and frees the pool; called once every task the driver
	 * submitted has run or been cancelled. Joins what it started. */
	void (*destroy)(void *pool);

	/* Runs item->run(item) on a worker as soon as one is free. Any thread.
	 * Must not fail for lack of room. 0 or -1. */
	int (*submit)(void *pool, struct sched_item *item);

	/* Runs item->run(item) on a worker, not before delay_ns after this
	 * call. Any thread. 0 or -1. NULL: see why_no_delay. */
	int (*submit_delayed)(void *pool, struct sched_item *item,
	                      int64_t delay_ns);

	/* The thread a program uses for this library's timers: runs fn(arg)
	 * there and returns once it has returned. NULL when any thread may
	 * use the calls below (fn then runs on the caller). The driver makes
	 * every submit_handle, cancel and release call inside such an fn. */
	void (*on_timer_thread)(void *pool, void (*fn)(void *arg), void *arg);

	/* submit_delayed that also returns a handle (NULL on failure). cancel
	 * returns 1 when the task will never run (item->cancelled has been or
	 * will be called), 0 when it is too late; release gives the handle
	 * back (after cancel, or after the task ran). NULL: see
	 * why_no_cancel. */
	void *(*submit_handle)(void *pool, struct sched_item *item,
	                       int64_t delay_ns);
	int   (*cancel)(void *pool, void *handle);
	void  (*release)(void *pool, void *handle);

	/* One line each: why a NULL feature is missing. NULL: it is there. */
	const char *why_no_delay;
	const char *why_no_cancel;
	const char *why_no_priority;
};

/* Defined by exactly one adapter file per executable. */
const struct sched_peer *sched_peer_get(void);

#ifdef __cplusplus
}
#endif

#endif /* CTP_BENCH_SCHED_PEER_H */
