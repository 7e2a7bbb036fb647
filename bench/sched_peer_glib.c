/*
 * sched_peer_glib.c: GLib behind the scheduling benchmark interface
 * (bench/sched_peer.h): a timeout source on a GMainContext run by its own
 * thread, which pushes the task to a GThreadPool when it fires.
 *
 * The GLib way:
 * - create: an exclusive GThreadPool of `workers` threads, a GMainContext
 *   and a GMainLoop run by one thread (g_main_loop_run). With priorities,
 *   g_thread_pool_set_sort_function orders the queue by item->priority
 *   (GAsyncQueue's sorted insert keeps FIFO among equals; it walks the
 *   queue from its low end, so inserting a high-priority task behind D
 *   queued low ones costs O(D)).
 * - submit: g_thread_pool_push (any thread).
 * - a delayed task: g_timeout_source_new(ms) + g_source_set_callback +
 *   g_source_attach to the context, from any thread (GLib's contexts are
 *   thread-safe; an attach from another thread wakes the context). The
 *   callback, on the context's thread, pushes the task to the pool and
 *   removes the source. Timeouts count whole milliseconds from the
 *   attach; the adapter asks for ceil((delay + 1 us) / 1 ms), since GLib's
 *   clock is read in microseconds (rounded down), so the task never starts
 *   early. GLib's lateness includes that rounding (0-1 ms, 0.5 ms on
 *   average for the benchmark's delays, drawn in 1 us steps).
 * - cancel (scenario cancel, on the context's thread, where a GLib program
 *   keeps its timeouts): g_source_destroy of a source that has not fired;
 *   once it has, the task is in the GThreadPool, which cannot withdraw one
 *   task: too late. A GLib context walks every attached source in each
 *   iteration (prepare/check), so a context holding 1,000,000 timeouts
 *   pays for them at every wake-up; the timed pairs run inside one
 *   callback, so they do not see that.
 * - Threads: g_thread_pool_free(pool, FALSE, TRUE) waits for the tasks
 *   (queued ones included), but GLib keeps pool threads as unused threads
 *   or lets them exit on their own (see bench/peer_glib.c).
 */
#include <glib.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>

#include "sched_peer.h"

struct gpool {
	GThreadPool  *tp;
	GMainContext *ctx;
	GMainLoop    *loop;
	GThread      *thread;
};

/* A delayed task; with a handle, freed by release. */
struct greq {
	struct gpool      *p;
	struct sched_item *item;
	GSource           *src;
	gboolean           fired;   /* on the context's thread only */
};

static void run_item(gpointer data, gpointer user_data)
{
	struct sched_item *item = data;

	(void)user_data;
	item->run(item);
}

static gint by_priority(gconstpointer a, gconstpointer b, gpointer user_data)
{
	const struct sched_item *x = a, *y = b;

	(void)user_data;
	return (x->priority < y->priority) - (x->priority > y->priority);
}

static gpointer loop_main(gpointer data)
{
	struct gpool *p = data;

	g_main_context_push_thread_default(p->ctx);
	g_main_loop_run(p->loop);
	g_main_context_pop_thread_default(p->ctx);
	return NULL;
}

static void *gl_create(unsigned workers, size_t capacity, int priorities)
{
	struct gpool *p = g_new0(struct gpool, 1);
	GError       *err = NULL;

	(void)capacity; /* unbounded */
	p->tp = g_thread_pool_new(run_item, p, (gint)workers, TRUE, &err);
	if (p->tp == NULL) {
		fprintf(stderr, "g_thread_pool_new: %s\n",
		        err ? err->message : "failed");
		g_clear_error(&err);
		g_free(p);
		return NULL;
	}
	if (priorities)
		g_thread_pool_set_sort_function(p->tp, by_priority, NULL);
	p->ctx = g_main_context_new();
	p->loop = g_main_loop_new(p->ctx, FALSE);
	p->thread = g_thread_new("bench-timer", loop_main, p);
	return p;
}

static void gl_destroy(void *pool)
{
	struct gpool *p = pool;

	g_main_loop_quit(p->loop);
	g_thread_join(p->thread);
	g_main_loop_unref(p->loop);
	g_main_context_unref(p->ctx);
	g_thread_pool_free(p->tp, FALSE, TRUE);
	g_free(p);
}

static int push(struct gpool *p, struct sched_item *item)
{
	GError *err = NULL;

	if (!g_thread_pool_push(p->tp, item, &err)) {
		fprintf(stderr, "g_thread_pool_push: %s\n",
		        err ? err->message : "failed");
		g_clear_error(&err);
		return -1;
	}
	return 0;
}

static int gl_submit(void *pool, struct sched_item *item)
{
	return push(pool, item);
}

static gboolean fire(gpointer data)
{
	struct greq *r = data;

	r->fired = TRUE;
	if (push(r->p, r->item) != 0)
		abort(); /* an exclusive pool's push cannot fail here */
	return G_SOURCE_REMOVE;
}

static struct greq *add_timeout(struct gpool *p, struct sched_item *item,
                                int64_t delay, GDestroyNotify notify)
{
	struct greq *r = g_new0(struct greq, 1);
	guint        ms = (guint)((delay + 1000 + 999999) / 1000000);

	r->p = p;
	r->item = item;
	r->src = g_timeout_source_new(ms);
	g_source_set_callback(r->src, fire, r, notify);
	g_source_attach(r->src, p->ctx);
	return r;
}

static int gl_submit_delayed(void *pool, struct sched_item *item,
                             int64_t delay)
{
	struct greq *r = add_timeout(pool, item, delay, g_free);

	g_source_unref(r->src); /* the context keeps it until it fires */
	return 0;
}

struct call {
	void (*fn)(void *);
	void  *arg;
	sem_t  called;
};

static gboolean call_fn(gpointer data)
{
	struct call *c = data;

	c->fn(c->arg);
	sem_post(&c->called);
	return G_SOURCE_REMOVE;
}

/* g_main_context_invoke from another thread: an idle source on the
 * context, which wakes it. */
static void gl_on_timer_thread(void *pool, void (*fn)(void *), void *arg)
{
	struct gpool *p = pool;
	struct call   c = { .fn = fn, .arg = arg };

	sem_init(&c.called, 0, 0);
	g_main_context_invoke(p->ctx, call_fn, &c);
	while (sem_wait(&c.called) != 0)
		;
	sem_destroy(&c.called);
}

/* On the context's thread (inside on_timer_thread). */
static void *gl_submit_handle(void *pool, struct sched_item *item,
                              int64_t delay)
{
	return add_timeout(pool, item, delay, NULL);
}

static int gl_cancel(void *pool, void *handle)
{
	struct greq *r = handle;

	(void)pool;
	if (r->fired || g_source_is_destroyed(r->src))
		return 0;
	g_source_destroy(r->src);
	r->item->cancelled(r->item);
	return 1;
}

static void gl_release(void *pool, void *handle)
{
	struct greq *r = handle;

	(void)pool;
	g_source_unref(r->src);
	g_free(r);
}

static char version[32];

static const struct sched_peer peer = {
	.name = "glib",
	.version = version,
	.create = gl_create,
	.destroy = gl_destroy,
	.submit = gl_submit,
	.submit_delayed = gl_submit_delayed,
	.on_timer_thread = gl_on_timer_thread,
	.submit_handle = gl_submit_handle,
	.cancel = gl_cancel,
	.release = gl_release,
};

const struct sched_peer *sched_peer_get(void)
{
	if (version[0] == '\0')
		snprintf(version, sizeof(version), "%u.%u.%u", glib_major_version,
		         glib_minor_version, glib_micro_version);
	return &peer;
}
