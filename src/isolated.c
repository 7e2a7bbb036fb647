/*
 * isolated.c: isolated tasks, the pool's side (proc.c is the processes').
 *
 * Design notes
 *   An isolated task is a task of the pool whose fn is iso_run, with its
 *   record in the task ext's iso (the user's function, a copy of the input, the
 *   output as it arrives, the exit signal, the outcome; internal.h).
 *   ctp_pool_submit_isolated (pool.c) makes it here (ctp__iso_new) and
 *   submits it like any task, so this file calls no pool.c function: the
 *   pool calls down into it. The worker thread
 *   that starts it:
 *     1. takes a free worker process ("slot"), waiting on `freed` (an event
 *        count, so the task's token ends the wait); a slot whose process
 *        is gone (the fork server could not replace it) is respawned by
 *        the thread that takes it, and -EAGAIN if that fails;
 *     2. stores RUNNING in the slot's page token, registers an internal
 *        watch on the task's token that fires the page token (proc.c, "The
 *        token across processes"), sends RUN;
 *     3. waits in poll on the slot's socket and its kill timer (a timerfd
 *        that the watch arms with kill_after when the token fires, so the
 *        dispatcher is not woken by the fire itself): OUT chunks are
 *        appended to the output, RESULT ends the task; the timer expired
 *        means the process gets SIGKILL through its pidfd; DIED (from the
 *        fork server, after whatever the worker sent) says how it died and
 *        brings the replacement;
 *     4. removes the watch (no write to the page after that), frees the
 *        slot, and returns the status, having set the outcome, which the
 *        worker loop counts (pool.c run_task) and the task's end state
 *        follows (task.c: CANCELLED for a task that never reached a
 *        process).
 *   While it does this the worker's `busy` is 2, not 1: a shutdown past
 *   its grace never abandons it (it kills its process instead:
 *   ctp__iso_kill_all, and the dispatcher returns within a DIED message).
 *   Once the grace is over it stays 2 through the task's done, so the
 *   shutdown waits for that done too instead of abandoning the thread
 *   (a pool whose only stragglers were isolated tasks returns 0).
 *
 *   Slots. `lock` protects each slot's busy/dead/kill flags and its proc
 *   while it is not busy; a busy slot's proc belongs to the thread that
 *   took it (it replaces it under the lock, so a kill never reads a torn
 *   pidfd). Counts (`alive`, killed, crashed) are relaxed statistics.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_KILL     CTP_SEC(1)

struct slot {
	struct ctp__proc p;    /* lock while not busy; the taker's while busy */
	int              tfd;  /* timerfd: armed by the fire, kill_after */
	char            *buf;  /* CTP__CHUNK: a message's payload (the taker's) */
	bool             busy; /* lock */
	bool             dead; /* lock: no process (p closed) */
	bool             kill; /* lock: killed by the pool (end of grace) */
};

struct ctp__iso_pool {
	pthread_mutex_t    lock;
	struct slot       *slots;
	unsigned           n;
	bool               killall;  /* lock: grace is over */
	bool               stopped;  /* lock */
	ck_ec32_t          freed;    /* bumped when a slot becomes free */
	struct ctp__server server;
	int64_t            kill_after; /* immutable; CTP_FOREVER = never */
	size_t             max_io;     /* immutable */
	_Atomic uint64_t   st_killed, st_crashed;
	_Atomic uint32_t   alive;
};

/* ---- pool lifetime ------------------------------------------------------ */

int ctp__iso_create(ctp_pool *pool)
{
	const ctp_pool_opts *o = &pool->opts;
	struct ctp__iso_pool *ip;
	struct ctp__spawn_ctx cx = { 0 };
	struct ctp__proc *procs;
	int r;

	if (o->processes == 0)
		return 0;
	ip = calloc(1, sizeof(*ip));
	procs = calloc(o->processes, sizeof(*procs));
	if (ip == NULL || procs == NULL ||
	    (ip->slots = calloc(o->processes, sizeof(*ip->slots))) == NULL) {
		free(ip);
		free(procs);
		return -ENOMEM;
	}
	ip->n = o->processes;
	ip->kill_after = o->kill_after == 0 ? DEFAULT_KILL : o->kill_after;
	ip->max_io = o->max_io == 0 ? CTP__MAX_IO_DEFAULT : o->max_io;
	pthread_mutex_init(&ip->lock, NULL);
	pthread_mutex_init(&ip->server.lock, NULL);
	cx.n = ip->n;
	cx.memory = o->process_memory;
	cx.max_io = ip->max_io;
	cx.parent = getpid();
	memcpy(cx.name, pool->name, sizeof(cx.name));
	cx.name[sizeof(cx.name) - 4] = '\0'; /* room for "-fs" */
	r = ctp__server_start(&ip->server, &cx, procs);
	if (r != 0) {
		pthread_mutex_destroy(&ip->lock);
		pthread_mutex_destroy(&ip->server.lock);
		free(ip->slots);
		free(ip);
		free(procs);
		return r;
	}
	for (unsigned i = 0; i < ip->n; i++) {
		ip->slots[i].p = procs[i];
		ip->slots[i].tfd = -1;
	}
	free(procs);
	for (unsigned i = 0; i < ip->n; i++) {
		ip->slots[i].tfd = timerfd_create(CLOCK_MONOTONIC,
		    TFD_CLOEXEC | TFD_NONBLOCK);
		if (ip->slots[i].tfd < 0)
			r = -errno;
		else if ((ip->slots[i].buf = malloc(CTP__CHUNK)) == NULL)
			r = -ENOMEM;
		if (r != 0) {
			pool->iso = ip;
			ctp__iso_free(pool);
			return r;
		}
	}
	atomic_init(&ip->alive, ip->n);
	pool->iso = ip;
	return 0;
}

void ctp__iso_kill_all(ctp_pool *pool)
{
	struct ctp__iso_pool *ip = pool->iso;

	if (ip == NULL)
		return;
	pthread_mutex_lock(&ip->lock);
	ip->killall = true;
	for (unsigned i = 0; i < ip->n; i++) {
		struct slot *s = &ip->slots[i];

		if (s->busy && !s->kill && s->p.pidfd >= 0) {
			s->kill = true;
			(void)ctp__pidfd_kill(s->p.pidfd);
		}
	}
	pthread_mutex_unlock(&ip->lock);
	ctp__ec_bump(&ip->freed); /* takers waiting for a slot give up */
}

void ctp__iso_stop(ctp_pool *pool)
{
	struct ctp__iso_pool *ip = pool->iso;

	if (ip == NULL)
		return;
	pthread_mutex_lock(&ip->lock);
	if (ip->stopped) {
		pthread_mutex_unlock(&ip->lock);
		return;
	}
	ip->stopped = ip->killall = true;
	pthread_mutex_unlock(&ip->lock);
	/* kills and reaps every worker, then itself */
	ctp__server_stop(&ip->server);
	pthread_mutex_lock(&ip->lock);
	for (unsigned i = 0; i < ip->n; i++) {
		/* a busy slot here would be a dispatcher still running: the
		 * callers (a shutdown that returned 0, destroy) exclude it */
		ctp__proc_close(&ip->slots[i].p);
		if (ip->slots[i].tfd >= 0)
			close(ip->slots[i].tfd);
		ip->slots[i].tfd = -1;
		ip->slots[i].dead = true;
	}
	atomic_store_explicit(&ip->alive, 0, memory_order_relaxed);
	pthread_mutex_unlock(&ip->lock);
	ctp__ec_bump(&ip->freed);
}

void ctp__iso_free(ctp_pool *pool)
{
	struct ctp__iso_pool *ip = pool->iso;

	if (ip == NULL)
		return;
	ctp__iso_stop(pool);
	pthread_mutex_destroy(&ip->lock);
	pthread_mutex_destroy(&ip->server.lock);
	for (unsigned i = 0; i < ip->n; i++)
		free(ip->slots[i].buf);
	free(ip->slots);
	free(ip);
	pool->iso = NULL;
}

void ctp__iso_stats(ctp_pool *pool, ctp_stats *s)
{
	struct ctp__iso_pool *ip = pool->iso;

	s->killed = s->crashed = 0;
	s->processes = 0;
	if (ip == NULL)
		return;
	s->killed = atomic_load_explicit(&ip->st_killed, memory_order_relaxed);
	s->crashed = atomic_load_explicit(&ip->st_crashed,
	    memory_order_relaxed);
	s->processes = atomic_load_explicit(&ip->alive, memory_order_relaxed);
}

/* ---- one task ----------------------------------------------------------- */

void ctp__iso_count(ctp_pool *pool, const ctp_task *t, int status)
{
	struct ctp__iso_pool *ip = pool->iso;

	switch (ctp__tx(t)->iso->outcome) {
	case CTP__ISO_KILLED:
		atomic_fetch_add_explicit(&ip->st_killed, 1,
		    memory_order_relaxed);
		break;
	case CTP__ISO_CRASHED:
	case CTP__ISO_NOPROC:
		atomic_fetch_add_explicit(&ip->st_crashed, 1,
		    memory_order_relaxed);
		break;
	case CTP__ISO_UNRUN:
		atomic_fetch_add_explicit(status == -ETIMEDOUT ?
		    &pool->st_timed_out : status == -ESHUTDOWN ?
		    &pool->st_dropped : &pool->st_cancelled, 1,
		    memory_order_relaxed);
		break;
	case CTP__ISO_RAN:
		break; /* the worker counts it completed */
	}
}

/* The internal watch on the task's token (runs on the firing thread, under
 * the token's lock, no user code): fires the worker's page token. It reads
 * only what it was given (the slot's proc may be replaced later, but only
 * after the dispatcher removed this watch). */
struct fire_ctx {
	struct ctp__page *page;
	int               efd;
	int               tfd;   /* the slot's kill timer */
	int64_t           kill;  /* kill_after, CTP_FOREVER: none */
	ctp_task         *t;
	_Atomic bool      armed; /* the fire reached the page: the eventfd
	                            and timer need resetting after the task */
};

static void remote_fire(void *arg)
{
	struct fire_ctx *fc = arg;
	uint32_t expect = CTP__PHASE_RUNNING;
	uint32_t reason = atomic_load(&fc->t->token.state) & CTP__REASON_MASK;

	if (reason == 0)
		return;
	/* fails once the worker has ended the function (DONE) or fired its
	 * own token (ctp_token_cancel inside the function) */
	if (atomic_compare_exchange_strong(&fc->page->token.state, &expect,
	    CTP__PHASE_RUNNING | reason | CTP__PENDING)) {
		struct ctp__page *pg = fc->page;
		uint64_t one = 1;

		atomic_store_explicit(&fc->armed, true, memory_order_relaxed);
		/* seq_cst loads after the CAS: Dekker pairs (proc.c) */
		if (atomic_load(&pg->token.sleepers) != 0)
			ctp__futex_wake_shared(&pg->token.state, INT_MAX);
		if (atomic_load(&pg->token.linked) != 0) {
			atomic_fetch_add(&pg->relay, 1);
			ctp__futex_wake_shared(&pg->relay, 1);
		}
		(void)!write(fc->efd, &one, sizeof(one));
		/* the dispatcher sleeps until the kill is due, not woken now */
		if (fc->kill != CTP_FOREVER) {
			struct itimerspec it = { .it_value = {
			    .tv_sec = fc->kill / 1000000000,
			    .tv_nsec = fc->kill % 1000000000 } };

			if (it.it_value.tv_sec == 0 && it.it_value.tv_nsec == 0)
				it.it_value.tv_nsec = 1;
			(void)timerfd_settime(fc->tfd, 0, &it, NULL);
		}
	}
}

/* Takes a free slot for t (or respawns a dead one). 0; the token's reason;
 * -EAGAIN (no process can be made); -ESHUTDOWN (grace over). */
static int acquire(struct ctp__iso_pool *ip, ctp_token *token,
                   struct slot **out)
{
	for (;;) {
		uint32_t snap = ctp__ec_value(&ip->freed);
		struct slot *dead = NULL;
		struct ctp__proc p;
		int r;

		if (ctp_token_cancelled(token))
			return ctp_token_reason(token);
		pthread_mutex_lock(&ip->lock);
		if (ip->killall) {
			pthread_mutex_unlock(&ip->lock);
			return -ESHUTDOWN;
		}
		for (unsigned i = 0; i < ip->n; i++) {
			struct slot *s = &ip->slots[i];

			if (s->busy)
				continue;
			if (!s->dead) {
				s->busy = true;
				pthread_mutex_unlock(&ip->lock);
				*out = s;
				return 0;
			}
			if (dead == NULL)
				dead = s;
		}
		if (dead != NULL) {
			dead->busy = true;
			pthread_mutex_unlock(&ip->lock);
			r = ctp__server_spawn(&ip->server,
			    (unsigned)(dead - ip->slots), &p);
			pthread_mutex_lock(&ip->lock);
			if (r == 0) {
				dead->p = p;
				dead->dead = false;
				atomic_fetch_add_explicit(&ip->alive, 1,
				    memory_order_relaxed);
				if (ip->killall) {
					dead->kill = true;
					(void)ctp__pidfd_kill(p.pidfd);
				}
				pthread_mutex_unlock(&ip->lock);
				*out = dead;
				return 0;
			}
			dead->busy = false;
			pthread_mutex_unlock(&ip->lock);
			return -EAGAIN;
		}
		pthread_mutex_unlock(&ip->lock);
		r = ctp__ec_wait(&ip->freed, snap, token, NULL);
		if (r < 0)
			return r;
	}
}

static void release(struct ctp__iso_pool *ip, struct slot *s)
{
	pthread_mutex_lock(&ip->lock);
	s->busy = false;
	s->kill = false;
	pthread_mutex_unlock(&ip->lock);
	ctp__ec_bump(&ip->freed);
}

/* The process of s died (DIED with its replacement, or EOF: the fork
 * server is gone): the replacement takes its place, or the slot is dead. */
static void replace(struct ctp__iso_pool *ip, struct slot *s,
                    const struct ctp__msg *m, const int *fds, int nfds,
                    bool eof)
{
	struct ctp__proc p;
	int r = -EPIPE;

	if (!eof && m->a == 0)
		r = ctp__proc_adopt(&p, m, fds, nfds);
	else
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
	pthread_mutex_lock(&ip->lock);
	ctp__proc_close(&s->p);
	if (r == 0) {
		s->p = p;
		if (ip->killall) {
			s->kill = true;
			(void)ctp__pidfd_kill(p.pidfd);
		}
	} else {
		s->dead = true;
		atomic_fetch_sub_explicit(&ip->alive, 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&ip->lock);
}

/* A DIED that came while the slot was idle (its process died between
 * tasks: killed from outside, the OOM killer): take the replacement
 * before using it. False if the slot is now dead. */
static bool settle(struct ctp__iso_pool *ip, struct slot *s)
{
	bool dead;

	pthread_mutex_lock(&ip->lock);
	dead = s->dead; /* a retry after a death with no replacement */
	pthread_mutex_unlock(&ip->lock);
	if (dead)
		return false;
	for (;;) {
		struct pollfd pf = { .fd = s->p.sock, .events = POLLIN };
		struct ctp__msg m;
		int fds[CTP__MSG_MAXFDS], nfds = CTP__MSG_MAXFDS, r;

		if (poll(&pf, 1, 0) <= 0)
			return true;
		r = ctp__msg_recv(s->p.sock, &m, NULL, 0, NULL, fds, &nfds);
		if (r == -EINTR || r == -ECONNRESET)
			continue; /* ECONNRESET: see dispatch */
		if (r == 0 && m.type == CTP__MSG_DIED) {
			replace(ip, s, &m, fds, nfds, false);
		} else {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			/* EOF (the fork server is gone) or garbage */
			if (r == 0)
				(void)ctp__pidfd_kill(s->p.pidfd);
			replace(ip, s, &m, NULL, 0, true);
		}
		pthread_mutex_lock(&ip->lock);
		r = s->dead;
		pthread_mutex_unlock(&ip->lock);
		if (r)
			return false;
	}
}

/* Appends a received payload to the output (at most max_io in all). A
 * failed allocation drops the bytes (the parent is out of memory). */
static void out_append(struct ctp__iso *iso, const char *p, size_t len,
                       size_t max_io)
{
	if (len == 0)
		return;
	if (len > max_io - iso->out_len)
		len = max_io - iso->out_len;
	if (len > iso->out_cap - iso->out_len) {
		size_t cap = iso->out_cap != 0 ? iso->out_cap : len;
		char *n;

		while (cap - iso->out_len < len)
			cap = cap > max_io / 2 ? max_io : cap * 2;
		n = realloc(iso->out, cap);
		if (n == NULL)
			return;
		iso->out = n;
		iso->out_cap = cap;
	}
	memcpy(iso->out + iso->out_len, p, len);
	iso->out_len += len;
}

/* Sends the input: inline up to CTP__CHUNK, else in a memfd. */
static int send_run(struct ctp__iso *iso, int sock)
{
	struct ctp__msg m = { .type = CTP__MSG_RUN };
	int fd, r;

	m.u = (uint64_t)(uintptr_t)iso->fn;
	if (iso->in_len <= CTP__CHUNK)
		return ctp__msg_send(sock, &m, iso->in, iso->in_len, NULL, 0);
	fd = memfd_create("ctp-in", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (size_t off = 0; off < iso->in_len;) {
		ssize_t n = write(fd, (char *)iso->in + off, iso->in_len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			close(fd);
			return r;
		}
		off += (size_t)n;
	}
	m.v = iso->in_len;
	r = ctp__msg_send(sock, &m, NULL, 0, &fd, 1);
	close(fd);
	return r;
}

/* How a dispatch ended on the socket, when the process is gone. */
struct lost {
	bool            died;   /* DIED came (else EOF or garbage) */
	struct ctp__msg m;
	int             fds[CTP__MSG_MAXFDS];
	int             nfds;
};

/* Runs t on the process of s. *retry: the process died before it read
 * the task (it was killed from outside while idle, before the fork
 * server's news of it arrived): it did not run, and the caller sends it
 * again, to the replacement. */
static int dispatch(struct ctp__iso_pool *ip, struct slot *s, ctp_task *t,
                    bool *retry)
{
	struct ctp__iso *iso = ctp__tx(t)->iso;
	struct fire_ctx fc = { s->p.page, s->p.efd, s->tfd, ip->kill_after,
	                       t, false };
	static const struct itimerspec disarm;
	struct ctp_watch watch;
	struct lost lost = { .nfds = 0 };
	bool killed = false, result = false, gone = false;
	bool watching;
	int status = 0, r;
	uint32_t taken;
	uint64_t v;

	*retry = false;
	if (!settle(ip, s)) {
		iso->outcome = CTP__ISO_NOPROC;
		return -EAGAIN; /* the fork server is gone */
	}
	fc.page = s->p.page;
	fc.efd = s->p.efd;
	/* the worker is idle: nobody else writes the word now */
	atomic_store(&s->p.page->token.state, CTP__PHASE_RUNNING);
	watching = ctp__token_watch_internal(&t->token, &watch, remote_fire,
	    &fc);
	if (!watching)
		remote_fire(&fc); /* fired before: the function sees it */
	taken = atomic_load(&s->p.page->taken); /* the worker is idle */
	r = send_run(iso, s->p.sock);
	if (r != 0 && r != -EPIPE && r != -ECONNRESET) {
		/* not sent (no memory for a memfd...): it never ran */
		if (watching)
			ctp__token_unwatch_internal(&watch);
		atomic_store(&s->p.page->token.state, CTP__PHASE_DONE);
		(void)timerfd_settime(s->tfd, 0, &disarm, NULL);
		while (read(s->tfd, &v, sizeof(v)) > 0)
			;
		while (read(s->p.efd, &v, sizeof(v)) > 0)
			;
		iso->outcome = CTP__ISO_NOPROC;
		return r;
	}
	while (!gone) {
		struct pollfd pf[2] = {
			{ .fd = s->p.sock, .events = POLLIN },
			{ .fd = s->tfd, .events = POLLIN },
		};
		struct ctp__msg m;
		int fds[CTP__MSG_MAXFDS], nfds = CTP__MSG_MAXFDS;
		size_t len = 0;

		if (poll(pf, killed || result ? 1 : 2, -1) < 0)
			continue;
		if (pf[1].revents != 0 && !killed && !result) {
			/* kill_after has passed since the token fired */
			(void)ctp__pidfd_kill(s->p.pidfd);
			killed = true;
		}
		if (pf[0].revents == 0)
			continue;
		r = ctp__msg_recv(s->p.sock, &m, s->buf, CTP__CHUNK, &len, fds,
		    &nfds);
		if (r == 0 && (m.type == CTP__MSG_OUT ||
		    m.type == CTP__MSG_RESULT)) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			out_append(iso, s->buf, len, ip->max_io);
			if (m.type == CTP__MSG_OUT || result)
				continue;
			result = true;
			status = m.a;
			iso->outcome = CTP__ISO_RAN;
			if (m.b == 0)
				break;
			/* it left state on its token and exits: wait for the
			 * fork server's DIED with its replacement */
			continue;
		}
		/* ECONNRESET: the worker died with a message of ours unread;
		 * what was queued for us (the fork server's DIED) follows */
		if (r == -EINTR || r == -EAGAIN || r == -ECONNRESET)
			continue;
		/* the process is gone: DIED, or EOF (the fork server and the
		 * worker are gone), or garbage (killed: it cannot be trusted) */
		gone = true;
		lost.died = r == 0 && m.type == CTP__MSG_DIED;
		if (lost.died) {
			lost.m = m;
			memcpy(lost.fds, fds, sizeof(int) * (size_t)nfds);
			lost.nfds = nfds;
		} else {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			if (r == 0)
				(void)ctp__pidfd_kill(s->p.pidfd);
		}
	}
	/* after this no write reaches the page, the eventfd or the timer
	 * for this task */
	if (watching)
		ctp__token_unwatch_internal(&watch);
	/* relaxed: the unwatch ordered the watch's writes before us */
	if (atomic_load_explicit(&fc.armed, memory_order_relaxed)) {
		(void)timerfd_settime(s->tfd, 0, &disarm, NULL);
		while (read(s->tfd, &v, sizeof(v)) > 0)
			;
		if (!gone)
			while (read(s->p.efd, &v, sizeof(v)) > 0)
				;
	}
	if (!gone)
		return status;
	if (!result) {
		bool bypool;
		int sig = 0;

		pthread_mutex_lock(&ip->lock);
		bypool = s->kill;
		pthread_mutex_unlock(&ip->lock);
		if (!killed && !bypool && lost.died &&
		    atomic_load(&s->p.page->taken) == taken) {
			/* it never read the task: not a crash of the task */
			replace(ip, s, &lost.m, lost.fds, lost.nfds, false);
			*retry = true;
			return -EAGAIN;
		}
		if (lost.died && (lost.m.b == CLD_KILLED ||
		    lost.m.b == CLD_DUMPED))
			sig = lost.m.c;
		else if (!lost.died && (killed || bypool))
			sig = SIGKILL; /* EOF: we killed it, nothing more known */
		iso->exit_signal = sig;
		if ((killed || bypool) && sig == SIGKILL) {
			iso->outcome = CTP__ISO_KILLED;
			status = ctp_token_reason(&t->token);
			if (status == 0)
				status = -ESHUTDOWN;
		} else {
			iso->outcome = CTP__ISO_CRASHED;
			status = -EOWNERDEAD;
		}
	}
	replace(ip, s, &lost.m, lost.fds, lost.nfds, !lost.died);
	return status;
}

static int iso_run(void *arg, ctp_token *token)
{
	ctp_task *t = (ctp_task *)ctp__tls.task;
	struct ctp__iso_pool *ip = ctp__task_pool(t)->iso;
	struct ctp__iso *iso = ctp__tx(t)->iso;
	struct ctp__worker *w = ctp__tls.worker;
	struct slot *s = NULL;
	int r;

	(void)arg;
	/* killable, so never abandoned by a shutdown past its grace */
	atomic_store_explicit(&w->busy, 2, memory_order_relaxed);
	/* this worker waits for a process: it takes no CPU */
	ctp__worker_blocked(1);
	r = acquire(ip, token, &s);
	if (r == 0) {
		bool retry;
		int tries = 0;

		do
			r = dispatch(ip, s, t, &retry);
		while (retry && ++tries < 8);
		if (retry)
			iso->outcome = CTP__ISO_NOPROC; /* -EAGAIN */
		release(ip, s);
	} else {
		iso->outcome = r == -EAGAIN ? CTP__ISO_NOPROC :
		    CTP__ISO_UNRUN;
	}
	free(iso->in);
	iso->in = NULL;
	ctp__worker_blocked(-1);
	/* Back to user code (done follows), unless a shutdown's grace is
	 * over: it killed this task's process and waits for it, done
	 * included, rather than count it a straggler it must abandon. */
	pthread_mutex_lock(&ip->lock);
	if (!ip->killall)
		atomic_store_explicit(&w->busy, 1, memory_order_relaxed);
	pthread_mutex_unlock(&ip->lock);
	return r;
}

/* ---- public API --------------------------------------------------------- */

int ctp__iso_new(ctp_pool *pool, ctp_isolated_fn fn, const void *in,
                size_t in_len, struct ctp__iso **out, ctp_task_fn *run)
{
	struct ctp__iso *iso;

	if (pool->iso == NULL)
		return -ENOTSUP;
	if (in_len > pool->iso->max_io)
		return -EMSGSIZE;
	iso = calloc(1, sizeof(*iso));
	if (iso == NULL)
		return -ENOMEM;
	if (in_len > 0) {
		iso->in = malloc(in_len);
		if (iso->in == NULL) {
			free(iso);
			return -ENOMEM;
		}
		memcpy(iso->in, in, in_len);
	}
	iso->in_len = in_len;
	iso->fn = fn;
	*out = iso;
	*run = iso_run;
	return 0;
}

int ctp_task_output(ctp_task *task, const void **data, size_t *len)
{
	const struct ctp__iso *iso;

	if (task == NULL || data == NULL || len == NULL ||
	    !task->token.opt.isolated)
		return -EINVAL;
	if (!ctp__task_finished(task))
		return -EINPROGRESS;
	iso = ctp__tx(task)->iso;
	*data = iso->out_len > 0 ? iso->out : NULL;
	*len = iso->out_len;
	return 0;
}

int ctp_task_exit_signal(const ctp_task *task)
{
	if (task == NULL || !task->token.opt.isolated ||
	    !ctp__task_finished(task))
		return 0;
	return ctp__tx(task)->iso->exit_signal;
}
