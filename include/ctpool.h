/*
 * ctpool: a fixed pool of worker threads with cancellable tasks.
 *
 * This header is the public contract (see docs/API.md in the shared docs).
 * Everything here may be called from any thread, including from inside a
 * task, unless its comment says otherwise.
 *
 * Conventions
 *   - Functions that can fail return 0 (or a count) on success and a negative
 *     errno on failure; ctp_strerror() names every code.
 *   - Durations are int64_t nanoseconds relative to the call, measured on
 *     CLOCK_MONOTONIC. CTP_FOREVER waits without limit, 0 does not wait, any
 *     other negative value is -EINVAL. Values up to INT64_MAX never overflow.
 *   - Option structs: all-zero means defaults; NULL means all defaults.
 *   - NULL given to a void release/destroy function is a no-op; to any other
 *     function that needs an object, -EINVAL.
 *   - "A thread of the pool": one of its workers (also while it runs a done
 *     callback or a watcher) or its timer thread. Calls that would wait for
 *     the pool from such a thread, or from inside a done callback of the same
 *     pool on any thread, return -EDEADLK.
 *   - The library never prints, never raises signals, keeps no global mutable
 *     state but a fork counter (every pool is independent) and calls user
 *     code (task functions, done callbacks, watchers, thread hooks) outside
 *     all of its locks.
 *   - fork(): in a child process, every call that would lock, wait or write
 *     a shared descriptor on a pool, task handle, token, watch or queue made
 *     before the fork returns -ECHILD (void calls do nothing; reads such as
 *     ctp_token_cancelled and ctp_task_state still answer): the pool has no
 *     threads in the child, and its locks may be held by threads that do not
 *     exist there. Objects made in the child work as usual, and the parent's
 *     are not disturbed (a token's fd is never written by the child). All
 *     descriptors the library makes are close-on-exec.
 */
#ifndef CTPOOL_H
#define CTPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CTP_BUILDING_LIBRARY) && defined(__GNUC__)
#define CTP_EXPORT __attribute__((visibility("default")))
#else
#define CTP_EXPORT
#endif

/* ---- version ------------------------------------------------------------ */

/* The version of this header. Below 1.0 a minor release may change the ABI
 * (grow a caller-allocated struct such as ctp_pool_opts, ctp_task_opts or
 * ctp_stats); every release that does bumps the shared library's soname
 * (libctpool.so.N), so a program built against an older header never runs
 * against an incompatible library by accident. See README.md, "Versions". */
#define CTP_VERSION_MAJOR 0
#define CTP_VERSION_MINOR 5
#define CTP_VERSION_PATCH 0
#define CTP_VERSION_NUM \
	((CTP_VERSION_MAJOR << 16) | (CTP_VERSION_MINOR << 8) | CTP_VERSION_PATCH)

/* ---- durations ---------------------------------------------------------- */

#define CTP_FOREVER ((int64_t)-1)
#define CTP_USEC(n) ((int64_t)(n) * INT64_C(1000))
#define CTP_MSEC(n) ((int64_t)(n) * INT64_C(1000000))
#define CTP_SEC(n)  ((int64_t)(n) * INT64_C(1000000000))

/* ---- limits ------------------------------------------------------------- */

/* Largest ctp_pool_opts.threads; more is -EINVAL. */
#define CTP_MAX_THREADS 1024u
/* Largest capacity (after rounding up to a power of two) of a pool's queue
 * or a ctp_queue; more is -EINVAL. */
#define CTP_MAX_CAPACITY ((size_t)1 << 30)
/* Largest ctp_pool_opts.processes; more is -EINVAL. */
#define CTP_MAX_PROCESSES 256u

/* ---- task states (ctp_task_state) --------------------------------------- */

#define CTP_TASK_QUEUED    1 /* accepted, waiting to start */
#define CTP_TASK_RUNNING   2 /* fn is running */
#define CTP_TASK_DONE      3 /* fn ran and returned (done may still run) */
#define CTP_TASK_CANCELLED 4 /* never ran, for any reason */

/* ---- opaque types ------------------------------------------------------- */

typedef struct ctp_pool  ctp_pool;
typedef struct ctp_task  ctp_task;
typedef struct ctp_token ctp_token;
typedef struct ctp_watch ctp_watch;
typedef struct ctp_queue ctp_queue;
typedef struct ctp_output ctp_output;

/* ---- callbacks ---------------------------------------------------------- */

/* A task. Runs on a worker. Its token is valid until fn returns. The return
 * value becomes the task's status (passed to done, returned by wait). */
typedef int  (*ctp_task_fn)(void *arg, ctp_token *token);

/* Completion: called exactly once for every accepted task, with fn's return
 * value, or with why fn never ran (-ECANCELED, -ETIMEDOUT, -ESHUTDOWN). After
 * it returns the library never touches arg again. For a task that ran it runs
 * on the worker, after fn. For a task that never ran it runs on the thread
 * that fired the task's token (the canceller, or the shutdown caller), or,
 * when its deadline passed while it was queued, on the pool's timer-callback
 * thread "<name>-tcb" (so a slow done never delays another deadline; a thread
 * that cancels an ancestor meanwhile may run it instead of waiting for it):
 * it must not take locks that such a caller may hold. */
typedef void (*ctp_done_fn)(void *arg, int status);

/* An isolated task's function (ctp_pool_submit_isolated). Runs in one of the
 * pool's worker processes, a copy of the program as it was when the pool
 * was created: in/in_len are a copy of the submitted input (in is NULL when
 * in_len is 0); output goes back through ctp_output_write(out, ...); token
 * fires when the task's token fires in the parent, with the same reason.
 * The return value becomes the task's status. */
typedef int (*ctp_isolated_fn)(const void *in, size_t in_len, ctp_output *out,
                               ctp_token *token);

/* ---- options and statistics --------------------------------------------- */

typedef struct ctp_pool_opts {
	unsigned    threads;         /* workers; 0 = CPUs in this process's
	                                affinity mask (sched_getaffinity);
	                                at most CTP_MAX_THREADS. With more
	                                workers than CPUs in the creating
	                                thread's mask, queued tasks keep at
	                                most that many workers awake while
	                                they make progress; another wakes
	                                once one has been in the same task
	                                for 1-2 ms (blocked, or long). A
	                                worker asleep in a wait of this
	                                library (ctp_token_sleep, a queue
	                                wait, an isolated task) does not
	                                count */
	size_t      queue_capacity;  /* tasks that may wait to start; 0 = 4096;
	                                rounded up to a power of two; at most
	                                CTP_MAX_CAPACITY */
	const char *name;            /* thread-name prefix; NULL = "ctp";
	                                threads are named "<name>-<index>",
	                                cut to the system's 15 characters; the
	                                timer thread is "<name>-timer" and the
	                                thread that runs the callbacks of its
	                                deadlines "<name>-tcb" (both started
	                                with the first task that has a
	                                timeout) */
	void      (*on_thread_start)(unsigned index, void *user); /* 0..threads-1 */
	void      (*on_thread_stop)(unsigned index, void *user);
	void       *user;
	/* isolated tasks (ctp_pool_submit_isolated): */
	unsigned    processes;       /* worker processes; 0 = none (isolated
	                                submits: -ENOTSUP); at most
	                                CTP_MAX_PROCESSES */
	int64_t     kill_after;      /* after an isolated task's token fires,
	                                how long its function may take to
	                                return before its process is killed
	                                with SIGKILL; 0 = 1 s; CTP_FOREVER =
	                                never killed (but see shutdown) */
	size_t      process_memory;  /* address-space limit (RLIMIT_AS) of
	                                each worker process, bytes; 0 = none */
	size_t      max_io;          /* most bytes of input or of output of
	                                one isolated task; 0 = 64 MiB */
} ctp_pool_opts;

typedef struct ctp_stats {
	uint64_t submitted;   /* accepted by ctp_pool_submit */
	uint64_t completed;   /* ran to the end of fn */
	uint64_t cancelled;   /* never ran: cancelled by handle or parent */
	uint64_t timed_out;   /* never ran: deadline passed before start */
	uint64_t rejected;    /* refused: queue full */
	uint64_t dropped;     /* never ran: dropped by shutdown */
	uint64_t queued;      /* waiting to start now */
	uint64_t running;     /* running now */
	unsigned threads;     /* workers alive now */
	uint64_t killed;      /* isolated tasks whose process was killed after
	                         their token fired (they ran: not completed) */
	uint64_t crashed;     /* isolated tasks whose process died on its own,
	                         or that found no process (-EAGAIN) */
	unsigned processes;   /* worker processes alive now (not counting the
	                         fork server and its one spare) */
} ctp_stats;

typedef struct ctp_task_opts {
	ctp_done_fn done;        /* exactly once for every accepted task */
	int64_t     timeout;     /* ns after submission when the token fires
	                            with -ETIMEDOUT; 0 or CTP_FOREVER = none */
	int64_t     queue_wait;  /* ns ctp_pool_submit may wait for room in a
	                            full queue; 0 = fail with -EAGAIN at once;
	                            CTP_FOREVER = wait for room */
	ctp_token  *parent;      /* the task's token fires when this one does */
	/* scheduling (see "scheduling" below); all zero = at once, once,
	 * normal priority */
	int64_t     delay;       /* ns after submission before the task may
	                            start; 0 = at once; negative = -EINVAL */
	int64_t     period;      /* > 0: a periodic task, due again every
	                            period ns; 0 = runs once; negative =
	                            -EINVAL */
	int         priority;    /* CTP_PRIORITY_LOW, _NORMAL (0), _HIGH;
	                            anything else = -EINVAL */
	unsigned    flags;       /* 0; reserved for later options (any bit
	                            set = -EINVAL) */
} ctp_task_opts;

/* ctp_task_opts.priority: a free worker starts the due task of the highest
 * priority first, FIFO within one priority. */
#define CTP_PRIORITY_LOW    (-1)
#define CTP_PRIORITY_NORMAL 0
#define CTP_PRIORITY_HIGH   1

/* ---- errors ------------------------------------------------------------- */

/* The version of the library linked at run time, as CTP_VERSION_NUM encodes
 * it ((major << 16) | (minor << 8) | patch); compare it with the header's
 * CTP_VERSION_NUM to detect a mismatch. Never fails. */
CTP_EXPORT unsigned ctp_version(void);

/* A distinct, static, non-NULL string for every code the library returns
 * (0 included); the system's text for any other code. Never fails. */
CTP_EXPORT const char *ctp_strerror(int err);

/* ---- pool --------------------------------------------------------------- */

/* Creates a pool and starts every worker before it returns: each worker has
 * run on_thread_start (on its own thread) by then, and stats.threads equals
 * the count. Returns 0 and *pool; -EINVAL (pool NULL, threads or capacity
 * above the maximum); -ENOMEM; -EAGAIN or another negated pthread_create
 * error if a thread cannot be started, in which case the workers that did
 * start run on_thread_stop, are joined, and everything is freed.
 *
 * With opts.processes > 0 it first forks a fork server (a single-threaded
 * copy of the program, named "<name>-fs") and, from it, that many worker
 * processes ("<name>-p") for isolated tasks, all before any thread of the
 * pool starts; stdio buffers are flushed first so that no pending output is
 * copied. Create such a pool early, before the program starts threads of
 * its own: locks other threads hold at that instant stay held in the copy.
 * The program gets a SIGCHLD when the fork server exits (at shutdown); the
 * worker processes are the fork server's children, never the program's,
 * so its own waitpid(-1) cannot take them. Also -EINVAL for processes above
 * CTP_MAX_PROCESSES or a negative kill_after other than CTP_FOREVER, and
 * the negated errno of a failed fork, socketpair, memfd or pidfd_open
 * (Linux 5.3 or later is needed). */
CTP_EXPORT int ctp_pool_create(ctp_pool **pool, const ctp_pool_opts *opts);

/* Stops the pool:
 *   1. from the call on, ctp_pool_submit returns -ESHUTDOWN (also from tasks),
 *      and submitters blocked in queue_wait return -ESHUTDOWN at once;
 *   2. drain: for up to `drain` ns workers keep starting queued tasks
 *      (0: no drain; CTP_FOREVER: no limit); it ends early once nothing is
 *      queued or running;
 *   3. cancel: every task still queued is dropped, its done(-ESHUTDOWN) runs
 *      on this thread before the call returns; every running task's token
 *      fires with -ESHUTDOWN;
 *   4. grace: waits up to `grace` ns (CTP_FOREVER: no limit) for running
 *      tasks to return and every thread of the pool to exit, and for the
 *      done callbacks of queued tasks that another thread's cancel caught
 *      (a group cancel racing the shutdown) to return. Threads that run no
 *      user code (idle workers on their way out) are always waited for:
 *      only user code can outlast `grace`.
 * Returns 0 once every thread has exited and been joined; -ETIMEDOUT if some
 * task ignored its token past `grace`, or a done, watcher or thread hook was
 * still running (its thread is abandoned: it finishes on its own, and nothing
 * it uses is freed under it; see ctp_pool_destroy); -EDEADLK from a thread of
 * the pool or a done callback of this pool; -ECHILD in a child of fork();
 * -EINVAL for NULL or a bad duration. Concurrent and repeated calls are safe:
 * the first call runs the sequence with its `drain`; every later call waits,
 * up to its own `grace` counted from its own start, for the first call's
 * cancel step (its done(-ESHUTDOWN) calls included) to end and then for the
 * threads to exit, so a call after -ETIMEDOUT returns 0 once the stragglers
 * have exited. */
CTP_EXPORT int ctp_pool_shutdown(ctp_pool *pool, int64_t drain, int64_t grace);

/* Shuts down with drain 0 and grace CTP_FOREVER unless ctp_pool_shutdown was
 * called, then frees the pool and returns 0. If an earlier shutdown abandoned
 * threads it returns 0 at once; the last of them frees what remains, and
 * until then an abandoned task may go on calling the pool: ctp_pool_submit
 * answers -ESHUTDOWN, nothing it uses is freed under it. -EINVAL for NULL;
 * -EDEADLK from a thread of the pool (nothing is freed then); -ECHILD in a
 * child of fork() (nothing is freed: the child's copy is left alone).
 * Must not race any other call on the same pool; after it returns the pool
 * must not be used. Task handles still held stay valid (ctp_task_state,
 * ctp_task_wait, ctp_task_cancel, ctp_task_release). Each thread that
 * submits keeps a few spare task objects (at most 64) of one pool, the
 * last it submitted to or freed a task of; this call frees the calling
 * thread's, and those another thread kept (with the pool's memory) are
 * freed when that thread submits to another pool or exits (the main
 * thread's stay until the process ends). */
CTP_EXPORT int ctp_pool_destroy(ctp_pool *pool);

/* Waits until no task is queued or running and every done has returned.
 * Returns 0; -ETIMEDOUT; -EDEADLK from a thread of the pool or a done
 * callback of this pool; -EINVAL. Any number of threads may wait at once. */
CTP_EXPORT int ctp_pool_wait_idle(ctp_pool *pool, int64_t timeout);

/* Fills *stats with a snapshot. Each field is read atomically but the fields
 * are not read at one instant; once the pool is idle, submitted == completed
 * + cancelled + timed_out + dropped. No-op if pool or stats is NULL. */
CTP_EXPORT void ctp_pool_stats(ctp_pool *pool, ctp_stats *stats);

/* ---- tasks -------------------------------------------------------------- */

/* Submits fn(arg, token). Returns 0 when accepted; with task != NULL also a
 * handle that the caller owns and gives back with ctp_task_release. Errors:
 * -EINVAL (pool or fn NULL, a negative duration other than CTP_FOREVER),
 * -EAGAIN (queue full and queue_wait ran out; counted in stats.rejected),
 * -ESHUTDOWN (also from an abandoned task after ctp_pool_destroy), -ENOMEM
 * (no memory, or the first task with a timeout could not start the timer
 * threads), -ECHILD (pool or parent made before fork() in this child), or
 * the parent's reason (e.g. -ECANCELED) when opts->parent has already fired. A
 * task that is not accepted never runs and its done is not called. Blocks
 * only while waiting for room (queue_wait); if opts->parent fires during that
 * wait, the call returns the parent's reason. The task's deadline counts from
 * the moment it is accepted. Tasks of one priority start in the order they
 * became due (FIFO: for tasks without a delay, the order they were
 * accepted); a task cancelled while queued leaves the queue at once (its
 * place and its memory). -EINVAL also for a negative delay or period, an
 * unknown priority or flags bit; see "scheduling" below. */
CTP_EXPORT int ctp_pool_submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                               const ctp_task_opts *opts, ctp_task **task);

/* Cancels a task by its handle. Returns 0 when it had not started: it never
 * runs and its done(-ECANCELED) has returned (on this thread) before this
 * returns; -EINPROGRESS when it is running: its token fired with -ECANCELED;
 * -EALREADY when it had finished or its token had already fired for any
 * reason; -EINVAL for NULL. A cancel racing with the start of the task gives
 * exactly one of these answers, and the task's behaviour matches it. */
CTP_EXPORT int ctp_task_cancel(ctp_task *task);

/* Waits until the task has finished and its done has returned; stores its
 * status (fn's return value, or why it never ran) in *status (may be NULL).
 * Returns 0; -ETIMEDOUT; -EDEADLK from inside the task itself or its own
 * done; -EINVAL. Waiting for another task from inside a task is allowed. */
CTP_EXPORT int ctp_task_wait(ctp_task *task, int64_t timeout, int *status);

/* CTP_TASK_QUEUED, _RUNNING, _DONE or _CANCELLED; -EINVAL for NULL. */
CTP_EXPORT int ctp_task_state(const ctp_task *task);

/* Gives back a handle. Allowed at any time (queued, running, after the pool
 * is destroyed); the task goes on. NULL is a no-op. */
CTP_EXPORT void ctp_task_release(ctp_task *task);

/* ---- scheduling: delays, priorities, periodic tasks --------------------- */

/*
 * These are options of ctp_pool_submit (ctp_task_opts.delay, .period,
 * .priority); handles, tokens, deadlines, done, cancel and shutdown behave
 * as for any task.
 *
 * Delay. A delayed task is accepted at once: it counts in `submitted`, is
 * CTP_TASK_QUEUED and holds a place of queue_capacity from submission. No
 * worker starts it before `delay` has passed: the pool's timer thread (the
 * one deadlines use; no polling) makes it due, and it starts within the
 * scheduler's wake-up time when a worker is free. Its deadline still
 * counts from submission: a timeout not longer than the delay means it
 * times out without running (so does any task whose deadline is not later
 * than its due time, also after a reschedule). Cancelling it removes it at
 * once (O(log n)).
 *
 * Priority. A free worker starts the due task of the highest priority
 * first, and within one priority the one that became due first (FIFO). A
 * running task is never pre-empted; low-priority tasks can wait without
 * limit while higher-priority work keeps every worker busy (stats.queued
 * shows them).
 *
 * Periodic tasks (period > 0). First due after `delay`, then at delay +
 * k * period after submission (fixed rate). Runs never overlap: a run that
 * ends after the next due time makes the next run due at once, and the
 * missed ones are skipped. Whatever a run returns, the series goes on; it
 * ends only when the task's token fires (ctp_task_cancel, a parent, its
 * timeout, a shutdown); a run may end its own series with ctp_token_cancel
 * on its own token. Between runs the task is CTP_TASK_QUEUED and
 * ctp_task_cancel returns 0; during a run -EINPROGRESS; after the end
 * -EALREADY. done is called once, at the end of the series: with the last
 * run's status if it was running when the token fired, else with the
 * token's reason. The series keeps its place of queue_capacity from
 * submission to its end (a run never waits for room to be queued again),
 * but counts in stats.queued only while it waits. It counts once in the
 * stats: `completed` if it ran at least once, else by why it never ran;
 * its final state is CTP_TASK_DONE if it ran, else CTP_TASK_CANCELLED.
 * ctp_task_wait waits for the end of the series. A shutdown ends every
 * series at its start: one waiting between runs (or for its first run) is
 * ended then, as if its token had fired with -ESHUTDOWN, and one running
 * is not started again. A delayed one-shot task is queued like any other:
 * a drain waits out its delay (and it runs), the cancel step after the
 * drain drops it. ctp_pool_wait_idle does not return while a series goes
 * on (it is queued or running). An isolated task cannot be periodic
 * (-ENOTSUP).
 * A run's token is the same token in every run: tokens a run creates under
 * it and tasks it submits with it as parent stay its children after the
 * run, and fire when the series ends (between runs too).
 */

/* Sets a task that has not started yet (or a periodic task between runs) to
 * become due `delay` ns from now (0: now, at the end of its priority's
 * queue), as the kernel's mod_delayed_work does; its deadline does not
 * move. Returns 0 when it took effect; -EINPROGRESS when the task is
 * running or a worker has already taken it (for a periodic task, its next
 * run is then due `delay` after this call); -EALREADY when it has finished
 * or its token has fired; -EINVAL for NULL or a negative delay; -ENOMEM
 * when the timer cannot hold one more delayed task, or when a task that
 * was submitted without a timeout, delay or period (and not isolated)
 * cannot get the few bytes for its due time (a task object gets them only
 * when it needs them). */
CTP_EXPORT int ctp_task_reschedule(ctp_task *task, int64_t delay);

/* ---- tokens ------------------------------------------------------------- */

/* True once the token has fired. One atomic load; token must not be NULL. */
CTP_EXPORT bool ctp_token_cancelled(const ctp_token *token);

/* 0, or why the token fired: -ECANCELED, -ETIMEDOUT, -ESHUTDOWN (the first
 * reason stays). -EINVAL for NULL. */
CTP_EXPORT int ctp_token_reason(const ctp_token *token);

/* Sleeps up to ns (CTP_FOREVER: until the token fires). Returns 0 when the
 * time ran out, or the token's reason as soon as it fires (at once if it
 * already has). -EINVAL for NULL or a bad duration. */
CTP_EXPORT int ctp_token_sleep(ctp_token *token, int64_t ns);

/* A file descriptor that becomes readable when the token fires and stays
 * readable: poll it, never read or close it. Made on first use, closed when
 * the token is freed. Returns the fd (>= 0); -EINVAL; -EMFILE, -ENFILE,
 * -ENOMEM when the descriptor cannot be made. */
CTP_EXPORT int ctp_token_fd(ctp_token *token);

/* Creates a standalone token; with parent != NULL it fires when the parent
 * does (and starts fired, with the parent's reason, if the parent already
 * has). The parent may be a standalone token or a task's token (while its fn
 * runs). Returns 0 and *token; -EINVAL; -ENOMEM. */
CTP_EXPORT int ctp_token_create(ctp_token **token, ctp_token *parent);

/* Fires the token with -ECANCELED, and with it every descendant: every queued
 * task in the tree never runs, and its done has returned before this call
 * returns; running tasks in the tree see their tokens fire. Cancelling a child
 * never fires its parent. Trees of any depth and width are fine (one lock at
 * a time, no recursion). In order: every sleeper, fd and ctp_queue wait in
 * the tree wakes; then the dones of the queued tasks it caught run on this
 * thread; then the watchers. When another thread is firing a subtree at the
 * same time (it cancelled a descendant first), this call also waits for that
 * thread's dones and watchers before it returns, except when it is called
 * from inside a done or watcher that a cancel runs (it could wait for
 * itself): then it returns once its own part of the tree is finished. And a
 * done must not wait for a cancel of an ancestor made on another thread
 * (that cancel waits for the done). Returns 0 when this call fired the token,
 * -EALREADY when it had already fired (then it waits for nothing), -ECHILD
 * (made before fork() in this child), -EINVAL for NULL. On a task's token it
 * cancels that task like ctp_task_cancel would. */
CTP_EXPORT int ctp_token_cancel(ctp_token *token);

/* Gives back a token from ctp_token_create. It lives on while tasks or child
 * tokens refer to it; tokens may be released in any order. NULL, and a task's
 * own token (which the pool owns), are no-ops. */
CTP_EXPORT void ctp_token_release(ctp_token *token);

/* Runs fn(arg) once when the token fires, on the thread that fires it (for a
 * deadline: the timer-callback thread), outside every library lock, after
 * every sleeper and fd of the fired tree woke; at once, on this thread, if it
 * already has. Returns 0 and *watch, to be given back with ctp_token_unwatch
 * exactly once whether or not fn ran; -EINVAL; -ENOMEM; -ECHILD. */
CTP_EXPORT int ctp_token_watch(ctp_token *token, void (*fn)(void *arg),
                               void *arg, ctp_watch **watch);

/* Frees a watch. Once it returns, fn is not running and will not run, except
 * when called from inside fn itself, where it returns without waiting (the
 * watch is freed when fn returns). A watch registered before its token fired
 * always runs: called after the fire and before fn ran, it waits for the
 * firer to run it (unless called from a done or watcher of that same fire:
 * then fn is dropped unrun rather than wait for itself). NULL is a no-op.
 * Blocks while fn runs on another thread. */
CTP_EXPORT void ctp_token_unwatch(ctp_watch *watch);

/* ---- isolated tasks ----------------------------------------------------- */

/* An isolated task runs its function in one of the pool's worker processes
 * (opts.processes), so it can be killed: a thread cannot be killed safely,
 * a process can. It is a task of the pool like any other (handle, token,
 * deadline, parent, done, cancel, wait, shutdown, stats); a pool worker
 * thread takes it, hands it to an idle worker process and waits there, so
 * at most min(threads, processes) isolated tasks run at once.
 *
 * Its token fires in the worker process too (same reason), and
 * ctp_token_cancelled/_reason/_sleep/_fd wake there as in a thread;
 * ctp_token_watch callbacks and ctp_queue waits on that token are woken by
 * a small thread of the worker process. If the function has not returned
 * opts.kill_after after its token fired, the process is killed (SIGKILL):
 * the task's done gets the token's reason, ctp_task_exit_signal says
 * SIGKILL, stats.killed counts it, and a fresh worker process (the fork
 * server keeps one spare ready) takes its place. A process that dies on its
 * own while the function runs (a signal, _exit(), exit(), the OOM killer,
 * opts.process_memory exceeded) gives done -EOWNERDEAD and stats.crashed.
 * Either way the task's state is CTP_TASK_DONE (it ran). At the end of a
 * shutdown's grace the isolated tasks still running are killed, whatever
 * kill_after says, so they never make it return -ETIMEDOUT.
 *
 * Copies in (in_len bytes; in may be NULL when in_len is 0) and accepts the
 * task like ctp_pool_submit (same opts, handle and errors); arg is what done
 * receives (the function never sees it: it lives in the parent). Returns 0;
 * -EINVAL (pool or fn NULL, in NULL with in_len > 0, a bad duration);
 * -ENOTSUP (the pool has no worker processes); -EMSGSIZE (in_len > max_io);
 * -EAGAIN, -ESHUTDOWN, -ENOMEM, the parent's reason, as ctp_pool_submit.
 *
 * done's status: fn's return value; the token's reason if the process was
 * killed, or if the token fired before the task reached a process (it then
 * never ran: CTP_TASK_CANCELLED, counted by reason); -EOWNERDEAD if the
 * process died; -EAGAIN if no worker process could be made for it (the
 * fork server is gone or fork failed): it never ran (CTP_TASK_CANCELLED)
 * and counts in stats.crashed. */
CTP_EXPORT int ctp_pool_submit_isolated(ctp_pool *pool, ctp_isolated_fn fn,
                                        const void *in, size_t in_len,
                                        void *arg, const ctp_task_opts *opts,
                                        ctp_task **task);

/* In the worker process, inside the function: appends len bytes to the
 * task's output. Returns 0; -EMSGSIZE past max_io (the output keeps what
 * fitted); -EINVAL (out NULL, data NULL with len > 0); -EPIPE if the parent
 * is gone. Output is buffered and sent to the parent each time 64 KiB has
 * gathered, and the rest when the function returns: a task that is killed
 * or crashes keeps the 64 KiB chunks already sent. Only the function's own
 * thread may call it. */
CTP_EXPORT int ctp_output_write(ctp_output *out, const void *data, size_t len);

/* An output kept in this process's memory, for code that runs functions of
 * the ctp_isolated_fn kind (or its own) in a thread and wants what they
 * write (libctpool-redis does): ctp_output_write appends to it, up to max
 * bytes (0 = 64 MiB), -EMSGSIZE past that (it keeps what fitted), -ENOMEM
 * when it cannot grow. One thread at a time may write it. Returns 0 and
 * *out; -EINVAL; -ENOMEM. */
CTP_EXPORT int ctp_output_create(ctp_output **out, size_t max);

/* What was written to an output of ctp_output_create: *data (NULL when *len
 * is 0) stays valid until the next write or ctp_output_free. 0; -EINVAL
 * (NULL arguments, or a worker process's output). */
CTP_EXPORT int ctp_output_data(const ctp_output *out, const void **data,
                               size_t *len);

/* Frees an output of ctp_output_create. NULL is a no-op. */
CTP_EXPORT void ctp_output_free(ctp_output *out);

/* Once an isolated task has finished: *data and *len are its output (data
 * may be NULL when len is 0), valid until the handle is released. Returns
 * 0; -EINPROGRESS before the task finished (its done has returned);
 * -EINVAL for NULL arguments or a task that is not isolated. */
CTP_EXPORT int ctp_task_output(ctp_task *task, const void **data,
                               size_t *len);

/* The signal that ended an isolated task's process (SIGKILL when it was
 * killed after its token fired, SIGSEGV, SIGABRT, ...); 0 for a task that
 * is not isolated or not finished, whose process survived it, or whose
 * process exited without a signal. */
CTP_EXPORT int ctp_task_exit_signal(const ctp_task *task);

/* ---- queue -------------------------------------------------------------- */

/* A bounded multi-producer multi-consumer FIFO of opaque pointers (NULL is a
 * valid item), lock-free on the fast path. capacity is rounded up to a power
 * of two and the queue holds exactly that many items. Returns 0 and *queue;
 * -EINVAL (NULL, capacity 0 or above CTP_MAX_CAPACITY); -ENOMEM. */
CTP_EXPORT int ctp_queue_create(ctp_queue **queue, size_t capacity);

/* Appends item, waiting up to timeout for room. Returns 0; -EAGAIN when
 * timeout is 0 and the queue is full; -ETIMEDOUT when the wait ran out (never
 * early); the token's reason as soon as token (may be NULL) fires, also when
 * it had fired before the call; -ESHUTDOWN once the queue is closed; -EINVAL.
 * A fired token wins over a free slot and over a closed queue. (The few bytes
 * the token's wake needs are allocated the first time a task's token is
 * waited on; if they cannot be had, the wait looks at the token every
 * millisecond instead, so it still ends within about 1 ms of the fire.) */
CTP_EXPORT int ctp_queue_push(ctp_queue *queue, void *item, ctp_token *token,
                              int64_t timeout);

/* Takes the oldest item, waiting up to timeout for one. Returns 0 and *item;
 * -EAGAIN when timeout is 0 and the queue is empty; -ETIMEDOUT; the token's
 * reason as soon as it fires; -ESHUTDOWN once the queue is closed and empty
 * (also with timeout 0: on a closed queue it waits out a push or pop that is
 * under way on another thread, so it never says -EAGAIN there); -ECHILD;
 * -EINVAL. A fired token wins over an available item. (A task's token
 * whose first wait cannot get its few bytes is looked at every millisecond,
 * as in ctp_queue_push.) */
CTP_EXPORT int ctp_queue_pop(ctp_queue *queue, void **item, ctp_token *token,
                             int64_t timeout);

/* Closes the queue: pushes fail with -ESHUTDOWN from now on, every waiter
 * wakes at once, items already queued can still be popped. Idempotent; NULL
 * is a no-op. */
CTP_EXPORT void ctp_queue_close(ctp_queue *queue);

/* Items in the queue now (a snapshot; pushes under way count). 0 for NULL. */
CTP_EXPORT size_t ctp_queue_size(const ctp_queue *queue);

/* Frees the queue. No call may be under way on it. Items still in it are not
 * touched: they remain the caller's. NULL is a no-op. */
CTP_EXPORT void ctp_queue_destroy(ctp_queue *queue);

#ifdef __cplusplus
}
#endif

#endif /* CTPOOL_H */
