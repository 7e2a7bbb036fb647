/*
 * peer_tbb.cc: the benchmark adapter for oneTBB's task_arena + task_group
 * (oneTBB 2021.8 here; the version string is TBB_runtime_version()).
 *
 * oneTBB is a work-stealing task scheduler, not a queue of jobs: one
 * process-wide set of worker threads serves "arenas"; tasks are spawned
 * into per-thread deques or enqueued into an arena's FIFO lanes, and a
 * task_group counts its tasks so that wait() can return when all are done.
 *
 * Mapping (see peer.h for each hook's contract):
 * - create: a tbb::task_scheduler_handle (attach) so that shutdown can join
 *   the workers; tbb::global_control(max_allowed_parallelism, workers + 1);
 *   tbb::task_arena arena(workers + 1, 1); a tbb::task_group. Then one
 *   barrier job per worker, waited for from outside the arena, because
 *   oneTBB starts its threads lazily: afterwards all `workers` threads
 *   exist. `capacity` is ignored (unbounded).
 *   Why these numbers: by default oneTBB allows cores - 1 worker threads
 *   (one here, on 2 cores) plus the application thread;
 *   max_allowed_parallelism counts that application thread, so workers + 1
 *   lets the market run `workers` threads. The arena has workers + 1 slots
 *   of which 1 is reserved for an application thread: it asks for exactly
 *   `workers` worker threads, and keeps a slot for the driver's main
 *   thread, which joins the arena when it waits. So while producers submit,
 *   `workers` threads run jobs (the producers only enqueue, they never
 *   join the arena); during wait_idle and group_destroy the main thread
 *   runs jobs too: tg.wait() always helps, as oneTBB intends. In the
 *   throughput scenario the tail of the run therefore has workers + 1
 *   threads executing jobs; the other peers' waiting thread sleeps.
 * - submit: arena.enqueue(tg.defer([item] { item->run(item); })). This is
 *   oneTBB's documented way to hand work to an arena from a thread that is
 *   not in it ("does not require the calling thread to join the arena"),
 *   safe from any number of threads at once, with the task still counted
 *   and cancellable by the task_group. The other common idiom,
 *   arena.execute([&] { tg.run(f); }), makes each producer join the arena
 *   for every submit and spawn into its own slot's deque, competing with
 *   the workers for arena slots; measured with the real driver (1M jobs,
 *   3 runs each) it was slower: 0.76-0.98 M jobs/s against 3.7-5.1 M with
 *   1 producer and 2 workers, 0.47-0.69 M against 1.0-4.2 M with 1 producer
 *   and 4 workers, about even with 2 producers and 2 workers. So this
 *   adapter enqueues. producer_begin/end are NULL.
 * - wait_idle: arena.execute([&] { tg.wait(); }) for the default group and
 *   for every group not yet destroyed.
 * - group_create: a group is a tbb::task_group of its own (so cancelling
 *   it leaves the blocking jobs of the default group alone); submit_group
 *   enqueues its tasks as submit does; cancel_group = tg.cancel(): every
 *   task of that group not yet started is skipped by the scheduler
 *   instead of run; group_destroy = arena.execute(tg.wait), then delete.
 * - shutdown: cancel and wait the default group, arena.terminate(), drop
 *   the global_control, then tbb::finalize(handle): a blocking terminate
 *   that returns once every oneTBB worker thread has exited (it is not a
 *   preview feature in 2021.8). Checked through /proc/self/task: 1 task
 *   (main) right after shutdown returns, from 5 during a 4-worker pool,
 *   and several pools created and shut down in one process each get
 *   fresh workers. joins_threads = 1.
 * - busy stop: the driver's flag loop (start_waiters NULL) through submit
 *   and shutdown, whose wait returns once the waiters have returned.
 * - cancel by handle: none (NULL hooks): oneTBB cancels whole
 *   task_group_contexts, never one task.
 *
 * What is different or unfair here:
 * - Memory: every task is allocated by oneTBB's small-object pool, which
 *   takes its memory from libtbbmalloc (scalable_aligned_malloc) when that
 *   library is installed, as it is here; the pool recycles blocks per
 *   thread. A malloc interposer in the executable never sees them.
 *   Measured: 100,000 jobs queued behind blocked workers made 0 malloc
 *   calls but 101,647 scalable_aligned_malloc calls (26.5 MB, ~260 bytes
 *   per queued job; gdb breakpoint count). Hence why_no_alloc_count.
 * - Wake-up: after running out of work, oneTBB workers keep spinning and
 *   yielding for a while before they sleep, so in the driver's wake
 *   scenario (one job, then 1 ms of sleep, 2,050 times) some are often
 *   still awake when the next job comes: lower wake latency, paid in CPU
 *   time. Measured with the real driver (4 workers): 1.7 s of CPU time
 *   (user + sys) over 2.45 s of wall time, against 0.16-0.25 s for the
 *   glib, libuv and asio peers, whose workers park on a futex at once. A
 *   pool with no work at all uses no CPU.
 * - The main thread helps: wait_idle runs tg.wait() inside the arena, so
 *   the thread that waits executes jobs too (see create above).
 * - Cancel by group is oneTBB's task_group cancellation: tg.cancel() only
 *   marks the group's context cancelled (O(1): 100,000 queued jobs took
 *   ~6 us); the scheduler then pops each cancelled task and drops it
 *   instead of running it, after the driver's clock stopped (when the
 *   gate opens). Jobs already running are not interrupted.
 * - The pool's tasks are not FIFO across lanes: enqueue uses several FIFO
 *   lanes picked at random, so the order of execution is only roughly the
 *   order of submission.
 */
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#include <oneapi/tbb/version.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include "peer.h"

namespace {

struct group {
	tbb::task_group tg;
};

struct pool {
	/* Members go bottom-up: the default group, the arena, the limit;
	 * tbb_free deletes the groups first and moves `sched` out to
	 * finalize it last. */
	tbb::task_scheduler_handle sched{tbb::attach{}};
	tbb::global_control threads;
	tbb::task_arena arena;
	tbb::task_group tg;          /* the default group (submit) */
	std::vector<group *> groups; /* groups not destroyed yet */

	explicit pool(unsigned workers)
		: threads(tbb::global_control::max_allowed_parallelism, workers + 1),
		  arena(static_cast<int>(workers) + 1, 1)
	{
	}

	template <typename F> void enqueue(tbb::task_group &g, F &&f)
	{
		arena.enqueue(g.defer(std::forward<F>(f)));
	}

	void wait(tbb::task_group &g)
	{
		arena.execute([&g] { g.wait(); });
	}
};

/* Every worker is started once all `workers` barrier jobs are inside at
 * the same time. Gives up after 2 s (a warning, not an error). */
void start_workers(pool *p, unsigned workers)
{
	using clock = std::chrono::steady_clock;
	std::atomic<unsigned> in{0};
	auto give_up = clock::now() + std::chrono::seconds(2);

	for (unsigned i = 0; i < workers; i++)
		p->enqueue(p->tg, [&in, workers, give_up] {
			in.fetch_add(1);
			while (in.load() < workers && clock::now() < give_up)
				std::this_thread::yield();
		});
	/* Outside the arena: the main thread must not take a barrier job. */
	while (in.load() < workers && clock::now() < give_up)
		std::this_thread::yield();
	if (in.load() < workers)
		std::fprintf(stderr, "tbb: only %u of %u workers started\n",
		             in.load(), workers);
	p->wait(p->tg);
}

void *tbb_create(unsigned workers, size_t capacity)
{
	(void)capacity; /* unbounded */
	try {
		pool *p = new pool(workers);

		start_workers(p, workers);
		return p;
	} catch (const std::exception &e) {
		std::fprintf(stderr, "tbb create: %s\n", e.what());
		return nullptr;
	}
}

int tbb_submit(void *vp, void *producer, struct bench_item *item)
{
	pool *p = static_cast<pool *>(vp);

	(void)producer;
	try {
		p->enqueue(p->tg, [item] { item->run(item); });
	} catch (const std::exception &e) {
		std::fprintf(stderr, "tbb submit: %s\n", e.what());
		return -1;
	}
	return 0;
}

void tbb_wait_idle(void *vp)
{
	pool *p = static_cast<pool *>(vp);

	p->wait(p->tg);
	for (group *g : p->groups)
		p->wait(g->tg);
}

void tbb_free(pool *p)
{
	p->tg.cancel(); /* queued jobs are dropped */
	p->wait(p->tg);
	for (group *g : p->groups) { /* left over by the caller: drop them */
		g->tg.cancel();
		p->wait(g->tg);
		delete g;
	}
	p->arena.terminate();
	tbb::task_scheduler_handle sched = std::move(p->sched);
	delete p;
	/* Blocking terminate: returns once every worker thread has exited. */
	if (!tbb::finalize(sched, std::nothrow))
		std::fprintf(stderr, "tbb::finalize: the workers were not joined\n");
}

void tbb_shutdown(void *vp)
{
	tbb_free(static_cast<pool *>(vp));
}

void *tbb_group_create(void *vp)
{
	pool *p = static_cast<pool *>(vp);

	try {
		group *g = new group;

		p->groups.push_back(g);
		return g;
	} catch (const std::exception &e) {
		std::fprintf(stderr, "tbb group: %s\n", e.what());
		return nullptr;
	}
}

int tbb_submit_group(void *vp, void *vg, struct bench_item *item)
{
	pool *p = static_cast<pool *>(vp);
	group *g = static_cast<group *>(vg);

	try {
		p->enqueue(g->tg, [item] { item->run(item); });
	} catch (const std::exception &e) {
		std::fprintf(stderr, "tbb submit: %s\n", e.what());
		return -1;
	}
	return 0;
}

void tbb_cancel_group(void *vp, void *vg)
{
	(void)vp;
	/* From here on, the scheduler skips this group's tasks that have
	 * not started. */
	static_cast<group *>(vg)->tg.cancel();
}

void tbb_group_destroy(void *vp, void *vg)
{
	pool *p = static_cast<pool *>(vp);
	group *g = static_cast<group *>(vg);

	p->wait(g->tg);
	for (auto it = p->groups.begin(); it != p->groups.end(); ++it)
		if (*it == g) {
			p->groups.erase(it);
			break;
		}
	delete g;
}

struct bench_peer make_peer()
{
	struct bench_peer x = {};

	x.name = "tbb";
	x.version = TBB_runtime_version();
	x.joins_threads = 1;
	x.create = tbb_create;
	x.submit = tbb_submit;
	x.wait_idle = tbb_wait_idle;
	x.shutdown = tbb_shutdown;
	x.group_create = tbb_group_create;
	x.submit_group = tbb_submit_group;
	x.cancel_group = tbb_cancel_group;
	x.group_destroy = tbb_group_destroy;
	x.why_no_cancel = "oneTBB cannot withdraw one task: cancellation works on a "
	                  "whole task_group";
	x.why_no_alloc_count = "oneTBB allocates its tasks from libtbbmalloc "
	                       "(scalable_aligned_malloc), invisible to a malloc counter";
	return x;
}

} // namespace

extern "C" const struct bench_peer *bench_peer_get(void)
{
	static const struct bench_peer peer = make_peer();
	return &peer;
}
