/*
 * sched_peer_asio.cc: Boost.Asio behind the scheduling benchmark interface
 * (bench/sched_peer.h): a steady_timer on an io_context run by its own
 * thread, whose handler posts the task to a thread_pool.
 *
 * The asio way:
 * - create: boost::asio::thread_pool of `workers` threads; an io_context
 *   kept alive by a work guard and run by one std::thread.
 * - submit: boost::asio::post(pool, ...) (any thread).
 * - a delayed task: a steady_timer on the io_context (made from any thread:
 *   distinct timer objects are safe, the reactor's timer queue is locked),
 *   expires_at(now + delay) with the caller's clock read at the call (asio's
 *   steady_clock is CLOCK_MONOTONIC, in ns), async_wait; the handler (on
 *   the io thread) posts the task to the pool and frees the timer. A timer
 *   never completes before its expiry, so no rounding is needed.
 * - cancel (scenario cancel, on the io thread, since a timer object must not
 *   be used from two threads at once): timer.cancel() returns how many
 *   waits it aborted: 1 means the handler will run with operation_aborted
 *   (the task is reported cancelled from there, when asio has run it), 0
 *   that it has expired: too late. The timer queue is a binary heap,
 *   O(log n) for both.
 * - One allocation per delayed task for the timer and asio's own for the
 *   handler; asio recycles handler memory per thread.
 * - No priorities: thread_pool runs handlers in FIFO order (see
 *   why_no_priority).
 */
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/version.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <future>
#include <memory>
#include <thread>

#include "sched_peer.h"

namespace {

namespace asio = boost::asio;

struct pool {
	asio::thread_pool tp;
	asio::io_context  ioc;
	asio::executor_work_guard<asio::io_context::executor_type> guard;
	std::thread       io;

	explicit pool(unsigned workers)
	    : tp(workers), guard(asio::make_work_guard(ioc)),
	      io([this] { ioc.run(); })
	{
	}
};

/* A delayed task. With a handle, freed by whichever of the handler and
 * release comes second (both on the io thread). */
struct req {
	asio::steady_timer timer;
	sched_item        *item;
	int                refs;

	req(asio::io_context &ioc, sched_item *it, int r)
	    : timer(ioc), item(it), refs(r)
	{
	}
};

void put(req *r)
{
	if (--r->refs == 0)
		delete r;
}

void *as_create(unsigned workers, size_t capacity, int priorities)
{
	(void)capacity;   /* unbounded */
	(void)priorities; /* none */
	try {
		return new pool(workers);
	} catch (const std::exception &e) {
		std::fprintf(stderr, "asio: %s\n", e.what());
		return nullptr;
	}
}

void as_destroy(void *vp)
{
	pool *p = static_cast<pool *>(vp);

	p->guard.reset();
	p->io.join(); /* run() returns: no timer left */
	p->tp.join();
	delete p;
}

int as_submit(void *vp, sched_item *item)
{
	pool *p = static_cast<pool *>(vp);

	try {
		asio::post(p->tp, [item] { item->run(item); });
	} catch (const std::exception &e) {
		std::fprintf(stderr, "asio post: %s\n", e.what());
		return -1;
	}
	return 0;
}

req *start(pool *p, sched_item *item, int64_t delay, int refs)
{
	auto due = asio::steady_timer::clock_type::now() +
	           std::chrono::nanoseconds(delay);
	req *r;

	try {
		r = new req(p->ioc, item, refs);
		r->timer.expires_at(due);
		r->timer.async_wait([p, r](const boost::system::error_code &ec) {
			if (!ec)
				asio::post(p->tp, [it = r->item] { it->run(it); });
			else
				r->item->cancelled(r->item);
			put(r);
		});
	} catch (const std::exception &e) {
		std::fprintf(stderr, "asio timer: %s\n", e.what());
		return nullptr;
	}
	return r;
}

int as_submit_delayed(void *vp, sched_item *item, int64_t delay)
{
	return start(static_cast<pool *>(vp), item, delay, 1) ? 0 : -1;
}

void as_on_timer_thread(void *vp, void (*fn)(void *), void *arg)
{
	pool *p = static_cast<pool *>(vp);
	std::promise<void> called;

	asio::post(p->ioc, [&] {
		fn(arg);
		called.set_value();
	});
	called.get_future().wait();
}

/* On the io thread (inside on_timer_thread). */
void *as_submit_handle(void *vp, sched_item *item, int64_t delay)
{
	return start(static_cast<pool *>(vp), item, delay, 2);
}

int as_cancel(void *vp, void *handle)
{
	(void)vp;
	return static_cast<req *>(handle)->timer.cancel() == 1;
}

void as_release(void *vp, void *handle)
{
	(void)vp;
	put(static_cast<req *>(handle));
}

char version[32];

sched_peer make_peer()
{
	sched_peer x = {};

	x.name = "asio";
	std::snprintf(version, sizeof(version), "%d.%d.%d", BOOST_VERSION / 100000,
	              BOOST_VERSION / 100 % 1000, BOOST_VERSION % 100);
	x.version = version;
	x.create = as_create;
	x.destroy = as_destroy;
	x.submit = as_submit;
	x.submit_delayed = as_submit_delayed;
	x.on_timer_thread = as_on_timer_thread;
	x.submit_handle = as_submit_handle;
	x.cancel = as_cancel;
	x.release = as_release;
	x.why_no_priority = "asio's thread_pool runs posted handlers in FIFO "
	                    "order: no priority";
	return x;
}

} // namespace

extern "C" const sched_peer *sched_peer_get(void)
{
	static const sched_peer peer = make_peer();
	return &peer;
}
