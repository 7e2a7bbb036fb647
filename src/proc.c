/*
 * proc.c: worker processes for isolated tasks: the fork server, the worker
 * process's loop, and the messages between them and the parent. It knows
 * nothing of pools: isolated.c drives it.
 *
 * Design notes
 *   Processes. ctp_pool_create (through ctp__server_start) forks one fork
 *   server before the pool starts any thread. The fork server is single
 *   threaded and forks every worker process, at start and to replace one
 *   that died, so the parent never forks while its threads run and every
 *   worker process starts as a one-thread copy of the program as it was at
 *   create. The fork server keeps one spare worker ready, so a killed
 *   worker is replaced at once (measured: fork ~1-2 ms at 11 MB here, 14 ms
 *   at 500 MB), and makes a new spare afterwards.
 *
 *   Who is whose child. The fork server is the parent's child; workers are
 *   the fork server's, so the application's waitpid(-1) can never take a
 *   worker's status. The fork server reaps its workers (it polls their
 *   pidfds) and reports each death to the parent. It exits when told
 *   (MSG_EXIT), when the control socket ends, or when the parent dies (a
 *   pidfd of the parent: it has no PR_SET_PDEATHSIG, which would follow the
 *   creating *thread*); it kills and reaps its workers first. Workers have
 *   PR_SET_PDEATHSIG(SIGKILL) towards the single-threaded fork server,
 *   checked against its pid after the prctl, so no worker outlives it.
 *
 *   Channels, all SOCK_SEQPACKET (message boundaries kept; measured 16-21
 *   us round trip here, stream 24-32 us), close-on-exec:
 *     control  parent <-> fork server: HELLO (a new worker: its socket,
 *              pidfd, page and eventfd) for every worker at start and for
 *              each SPAWN request; EXIT.
 *     worker   parent end P, worker end W, one per worker process. Parent
 *              -> worker: RUN (fn, input inline up to 64 KiB, else a memfd
 *              passed with it). Worker -> parent: OUT chunks (up to 64 KiB,
 *              as the output is written), then RESULT. The fork server
 *              keeps a copy of W: when the worker dies it sends DIED on it
 *              (the wait status, and the replacement's four fds), after
 *              everything the worker sent, so the parent reads one
 *              ordered stream per task, and sees EOF only when the fork
 *              server itself is gone.
 *   Every process has its own page (a memfd shared with the parent) holding
 *   the worker-side token (a CTP__TOKEN_REMOTE, internal.h), and its own
 *   eventfd, which is that token's ctp_token_fd.
 *
 *   The token across processes. The parent, when the task's token fires
 *   (an internal watch, isolated.c), CASes the page token's word from
 *   RUNNING to RUNNING|reason|PENDING, wakes its sleepers with a shared
 *   futex and writes the eventfd: ctp_token_cancelled, ctp_token_sleep and
 *   ctp_token_fd see it at once (one hop: 5.8 us measured, against 55-69
 *   us through a relay thread). If the token is `linked` (children,
 *   ctp_queue waits, watchers) it also bumps the page's `relay` word: the
 *   worker's relay thread wakes and, under `relay_lock`, adopts the fire
 *   (ctp__token_adopt), which runs them. Both reads are Dekker pairs with
 *   the worker's own (a sleeper raises `sleepers`, a registration sets
 *   `linked`, then each re-reads the word; the parent CASes the word, then
 *   reads them; all seq_cst): either the parent sees the worker's mark, or
 *   the worker sees the token fired and acts itself. Between tasks the
 *   word is DONE (the parent's CAS then fails). Per task:
 *     parent: store RUNNING (the worker is idle, nobody else writes), add
 *             the watch (or fire at once), send RUN;
 *     worker: run fn; then under relay_lock: adopt a pending fire, check
 *             that fn left nothing on the token (else it retires after the
 *             task: its memory is still referenced), re-init it DONE, drain
 *             the eventfd; send RESULT;
 *     parent: read RESULT, remove the watch (after which it never writes
 *             the page for this task), then the worker may get the next.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* ---- messages ----------------------------------------------------------- */

int ctp__pidfd_open(pid_t pid)
{
	long r = syscall(SYS_pidfd_open, pid, 0);

	return r < 0 ? -errno : (int)r;
}

int ctp__pidfd_kill(int pidfd)
{
	return syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) < 0 ?
	    -errno : 0;
}

int ctp__msg_send(int fd, const struct ctp__msg *m, const void *data,
                  size_t len, const int *fds, int nfds)
{
	struct iovec iov[2] = {
		{ .iov_base = (void *)m, .iov_len = sizeof(*m) },
		{ .iov_base = (void *)data, .iov_len = len },
	};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * CTP__MSG_MAXFDS)];
	} c;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };

	if (nfds > 0) {
		memset(&c, 0, sizeof(c));
		mh.msg_control = c.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		c.h.cmsg_level = SOL_SOCKET;
		c.h.cmsg_type = SCM_RIGHTS;
		c.h.cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(&c.h), fds, sizeof(int) * (size_t)nfds);
	}
	for (;;) {
		if (sendmsg(fd, &mh, MSG_NOSIGNAL) >= 0)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
}

int ctp__msg_recv(int fd, struct ctp__msg *m, void *data, size_t cap,
                  size_t *len, int *fds, int *nfds)
{
	struct iovec iov[2] = {
		{ .iov_base = m, .iov_len = sizeof(*m) },
		{ .iov_base = data, .iov_len = cap },
	};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * CTP__MSG_MAXFDS)];
	} c;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = cap ? 2 : 1,
	                     .msg_control = c.buf,
	                     .msg_controllen = sizeof(c.buf) };
	struct cmsghdr *h;
	ssize_t n;
	int got = 0, room = nfds != NULL ? *nfds : 0;

	if (nfds != NULL)
		*nfds = 0; /* also on every error */
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (h = CMSG_FIRSTHDR(&mh); h != NULL; h = CMSG_NXTHDR(&mh, h)) {
		if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
			int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));

			for (int i = 0; i < k; i++) {
				int f;

				memcpy(&f, CMSG_DATA(h) + i * sizeof(int),
				    sizeof(int));
				if (fds != NULL && got < room)
					fds[got++] = f;
				else
					close(f);
			}
		}
	}
	if (nfds != NULL)
		*nfds = got;
	if (n == 0)
		return -EPIPE; /* EOF: every writer of the other end is gone */
	if ((size_t)n < sizeof(*m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		for (int i = 0; i < got; i++)
			close(fds[i]);
		if (nfds != NULL)
			*nfds = 0;
		return -EPROTO;
	}
	if (len != NULL)
		*len = (size_t)n - sizeof(*m);
	return 0;
}

/* ---- the worker process ------------------------------------------------- */

/* An output: a worker process's (sock >= 0: buf is a CTP__CHUNK buffer sent
 * to the parent each time it fills) or one in memory (ctp_output_create:
 * sock -1, buf grows to hold everything written, cap its size). Either is
 * used by one thread at a time (the function's own). */
struct ctp_output {
	int     sock;
	size_t  len;    /* bytes in buf (not yet sent, for a process's) */
	size_t  total;  /* bytes accepted by ctp_output_write in this task */
	size_t  max;    /* max_io */
	size_t  cap;    /* in memory: bytes allocated at buf */
	char   *buf;    /* CTP__CHUNK bytes (a process's), or cap bytes */
};

/* The worker process's state (one per process; only its two threads). */
static struct {
	struct ctp__page *page;
	pthread_mutex_t   relay_lock; /* the relay's adopt vs the task's end */
} wp = { .relay_lock = PTHREAD_MUTEX_INITIALIZER };

static int out_flush(ctp_output *out)
{
	struct ctp__msg m = { .type = CTP__MSG_OUT };
	int r;

	if (out->len == 0)
		return 0;
	m.v = out->len;
	r = ctp__msg_send(out->sock, &m, out->buf, out->len, NULL, 0);
	out->len = 0;
	return r;
}

/* An in-memory output's append: grows buf by doubling. */
static int out_mem_write(ctp_output *out, const char *p, size_t len)
{
	if (len > out->cap - out->len) {
		size_t cap = out->cap ? out->cap : 256;
		char *nb;

		while (cap - out->len < len)
			cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
		nb = realloc(out->buf, cap);
		if (nb == NULL)
			return -ENOMEM;
		out->buf = nb;
		out->cap = cap;
	}
	memcpy(out->buf + out->len, p, len);
	out->len += len;
	out->total += len;
	return 0;
}

int ctp_output_write(ctp_output *out, const void *data, size_t len)
{
	const char *p = data;
	int r = 0;

	if (out == NULL || (data == NULL && len > 0))
		return -EINVAL;
	if (len > out->max - out->total) {
		len = out->max - out->total;
		r = -EMSGSIZE;
	}
	if (out->sock < 0) {
		int e = len ? out_mem_write(out, p, len) : 0;

		return e ? e : r;
	}
	while (len > 0) {
		size_t n = CTP__CHUNK - out->len;

		if (n > len)
			n = len;
		memcpy(out->buf + out->len, p, n);
		out->len += n;
		out->total += n;
		p += n;
		len -= n;
		if (out->len == CTP__CHUNK && out_flush(out) != 0)
			return -EPIPE;
	}
	return r;
}

int ctp_output_create(ctp_output **out, size_t max)
{
	ctp_output *o;

	if (out == NULL)
		return -EINVAL;
	o = calloc(1, sizeof(*o));
	if (o == NULL)
		return -ENOMEM;
	o->sock = -1;
	o->max = max ? max : CTP__MAX_IO_DEFAULT;
	*out = o;
	return 0;
}

int ctp_output_data(const ctp_output *out, const void **data, size_t *len)
{
	if (out == NULL || out->sock >= 0 || data == NULL || len == NULL)
		return -EINVAL;
	*data = out->len ? out->buf : NULL;
	*len = out->len;
	return 0;
}

void ctp_output_free(ctp_output *out)
{
	if (out == NULL || out->sock >= 0)
		return;
	free(out->buf);
	free(out);
}

/* The page token between functions: DONE (a parent's fire fails), fd the
 * process's eventfd (ctp_token_fd returns it; the parent writes it; the
 * parent drains it between tasks). The fork server runs this on a new
 * page before the fork, so the parent may dispatch at once. */
static void token_reset(struct ctp__page *pg, int efd)
{
	ctp__token_init(&pg->token, CTP__TOKEN_REMOTE, CTP__PHASE_DONE,
	    &pg->token_ext, false);
	pg->token_ext.fd = efd;
}

/* The relay thread: adopts the parent's fires (internal.h, PENDING) when
 * the token has children or watches; the parent bumps `relay` then. */
static void *relay_main(void *arg)
{
	struct ctp__page *pg = wp.page;

	(void)arg;
	for (;;) {
		uint32_t v = atomic_load(&pg->relay);

		if (atomic_load(&pg->token.state) & CTP__PENDING) {
			pthread_mutex_lock(&wp.relay_lock);
			(void)ctp__token_adopt(&pg->token);
			pthread_mutex_unlock(&wp.relay_lock);
		}
		ctp__futex_wait_shared(&pg->relay, v, NULL);
	}
	return NULL;
}

/* After fn returned: the token back to DONE for the next task. Returns
 * true if fn left references, watches or children on it (the process must
 * then retire: that memory is still in use). */
static bool task_end(void)
{
	ctp_token *t = &wp.page->token;
	struct ctp__token_ext *x = &wp.page->token_ext;
	bool dirty;
	int efd = x->fd;
	uint64_t v;

	pthread_mutex_lock(&wp.relay_lock);
	/* out of RUNNING, so the parent's CAS fails from now on; a fire it
	 * made first is run here (its watches, its children) */
	for (;;) {
		uint32_t s = atomic_load(&t->state);

		if (s & CTP__PENDING) {
			(void)ctp__token_adopt(t);
			continue;
		}
		if (atomic_compare_exchange_strong(&t->state, &s,
		    (s & CTP__REASON_MASK) | CTP__PHASE_DONE))
			break;
	}
	dirty = atomic_load(&t->refs) != 1 || x->children != NULL ||
	    x->watches != NULL;
	/* our own writes to the eventfd (a fire run here); the parent drains
	 * its own after the task */
	while (read(efd, &v, sizeof(v)) > 0)
		;
	if (!dirty) {
		x->fd = -1; /* the process's, not the token's to close */
		ctp__token_fini(t, false);
		token_reset(wp.page, efd); /* this process's gen */
	}
	pthread_mutex_unlock(&wp.relay_lock);
	return dirty;
}

static _Noreturn void worker_main(const struct ctp__spawn_ctx *cx, int sock,
                                  int pagefd)
{
	struct ctp__msg m;
	pthread_attr_t attr;
	pthread_t relay;
	char *inbuf, name[16];
	ctp_output out = { .sock = -1 };

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != cx->server)
		_exit(0); /* the fork server is already gone */
	snprintf(name, sizeof(name), "%.12s-p", cx->name);
	prctl(PR_SET_NAME, name);
	wp.page = mmap(NULL, CTP__PAGE_SIZE, PROT_READ | PROT_WRITE,
	    MAP_SHARED, pagefd, 0);
	close(pagefd);
	inbuf = malloc(CTP__CHUNK);
	out.buf = malloc(CTP__CHUNK);
	if (wp.page == MAP_FAILED || inbuf == NULL || out.buf == NULL)
		_exit(126);
	/* made by the fork server (token_reset); the parent may have fired
	 * it already: only what is ours changes. Its ext pointer is the fork
	 * server's address of the page: ours may differ (the parent never
	 * follows it: it reads the word, sleepers and linked only) */
	atomic_store_explicit(&wp.page->token.ext, &wp.page->token_ext,
	    memory_order_relaxed);
	wp.page->token_ext.gen = ctp__gen();
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	if (pthread_create(&relay, &attr, relay_main, NULL) != 0)
		_exit(126);
	pthread_attr_destroy(&attr);
	if (cx->memory != 0) {
		struct rlimit rl = { cx->memory, cx->memory };

		if (setrlimit(RLIMIT_AS, &rl) != 0)
			_exit(126);
	}
	out.sock = sock;
	out.max = cx->max_io;
	for (;;) {
		int fds[1], nfds = 1, status;
		size_t len = 0;
		const void *in;
		void *map = NULL;
		bool retire;

		if (ctp__msg_recv(sock, &m, inbuf, CTP__CHUNK, &len, fds,
		    &nfds) != 0 || m.type != CTP__MSG_RUN)
			_exit(0); /* the parent closed our socket */
		atomic_fetch_add(&wp.page->taken, 1); /* before fn runs */
		in = len > 0 ? inbuf : NULL;
		if (nfds == 1) {
			if (m.v > 0) {
				map = mmap(NULL, m.v, PROT_READ, MAP_PRIVATE,
				    fds[0], 0);
				if (map == MAP_FAILED)
					_exit(125);
			}
			close(fds[0]);
			in = map;
			len = m.v;
		}
		out.len = out.total = 0;
		status = ((ctp_isolated_fn)(uintptr_t)m.u)(in, len, &out,
		    &wp.page->token);
		if (map != NULL)
			munmap(map, len);
		retire = task_end();
		fflush(NULL);
		m = (struct ctp__msg){ .type = CTP__MSG_RESULT, .a = status,
		                       .b = retire };
		if (out.len > 0)
			m.v = out.len;
		if (ctp__msg_send(sock, &m, out.buf, out.len, NULL, 0) != 0 ||
		    retire)
			_exit(0);
		out.len = 0;
	}
}

/* ---- the fork server ---------------------------------------------------- */

struct child {
	pid_t pid;
	int   pidfd;   /* kept to reap it */
	int   w;       /* the worker's end W: DIED goes there */
	int   give[4]; /* while not yet handed out: P, pidfd, page, eventfd */
};

static struct {
	const struct ctp__spawn_ctx *cx;
	struct ctp__spawn_ctx cxv; /* cx, with `server` set */
	int           ctl, ppidfd;
	int           old_w;  /* a dead worker's W, open while it is replaced */
	struct child *kids;   /* cx->n of them: pid 0 = none */
	struct child  spare;  /* pid 0 = none */
} fs;

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void give_close(struct child *c)
{
	for (int i = 0; i < 4; i++)
		close_fd(&c->give[i]);
}

/* In a new worker: closes every fd of the fork server but its own. */
static void close_server_fds(void)
{
	close(fs.ctl);
	close(fs.ppidfd);
	if (fs.old_w >= 0)
		close(fs.old_w);
	for (unsigned i = 0; i < fs.cx->n; i++) {
		if (fs.kids[i].pid != 0) {
			close(fs.kids[i].pidfd);
			close(fs.kids[i].w);
		}
	}
	if (fs.spare.pid != 0) {
		close(fs.spare.pidfd);
		close(fs.spare.w);
		for (int i = 0; i < 4; i++)
			if (fs.spare.give[i] >= 0)
				close(fs.spare.give[i]);
	}
}

/* Forks a worker into *c (its four fds to give in c->give). 0 or -errno. */
static int make_worker(struct child *c)
{
	struct ctp__page *pg;
	int sv[2], page, efd, r;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
		return -errno;
	page = memfd_create("ctp-page", MFD_CLOEXEC);
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (page < 0 || efd < 0 || ftruncate(page, CTP__PAGE_SIZE) != 0) {
		r = -errno;
		goto fail;
	}
	pg = mmap(NULL, CTP__PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
	    page, 0);
	if (pg == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	token_reset(pg, efd); /* the same fd number in the worker */
	munmap(pg, CTP__PAGE_SIZE);
	pid = fork();
	if (pid < 0) {
		r = -errno;
		goto fail;
	}
	if (pid == 0) {
		close_server_fds();
		close(sv[0]);
		worker_main(fs.cx, sv[1], page);
	}
	c->pid = pid;
	/* our child, not yet reaped: the pid cannot have been reused */
	c->pidfd = ctp__pidfd_open(pid);
	if (c->pidfd < 0) {
		r = c->pidfd;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		c->pid = 0;
		goto fail;
	}
	c->w = sv[1];
	c->give[0] = sv[0];
	c->give[1] = c->pidfd;
	c->give[2] = page;
	c->give[3] = efd;
	return 0;
fail:
	close(sv[0]);
	close(sv[1]);
	if (page >= 0)
		close(page);
	if (efd >= 0)
		close(efd);
	return r;
}

/* Hands a made worker out: sends m with its fds on fd. The server keeps
 * its pidfd and W. */
static void hand_out(int fd, struct ctp__msg *m, struct child *c)
{
	m->u = (uint64_t)c->pid;
	(void)ctp__msg_send(fd, m, NULL, 0, c->give, 4);
	c->give[1] = -1; /* the pidfd stays */
	give_close(c);
}

/* A worker for a slot: the spare if there is one, else a new one. */
static int take_worker(struct child *c)
{
	int r;

	if (fs.spare.pid != 0) {
		*c = fs.spare;
		fs.spare.pid = 0;
		return 0;
	}
	r = make_worker(c);
	return r;
}

static void refill_spare(void)
{
	if (fs.spare.pid == 0 && make_worker(&fs.spare) != 0)
		fs.spare.pid = 0; /* try again at the next hand-out */
}

static void reap(struct child *c, siginfo_t *si)
{
	memset(si, 0, sizeof(*si));
	while (waitid(P_PIDFD, (id_t)c->pidfd, si, WEXITED) != 0 &&
	    errno == EINTR)
		;
	close_fd(&c->pidfd);
	c->pid = 0;
}

static _Noreturn void server_exit(void)
{
	siginfo_t si;

	for (unsigned i = 0; i <= fs.cx->n; i++) {
		struct child *c = i < fs.cx->n ? &fs.kids[i] : &fs.spare;

		if (c->pid != 0) {
			ctp__pidfd_kill(c->pidfd);
			reap(c, &si);
		}
	}
	_exit(0);
}

static _Noreturn void server_main(const struct ctp__spawn_ctx *cx, int ctl)
{
	struct pollfd *pf;
	char name[16];

	fs.cxv = *cx;
	fs.cxv.server = getpid();
	fs.cx = cx = &fs.cxv;
	fs.ctl = ctl;
	fs.old_w = -1;
	signal(SIGCHLD, SIG_DFL); /* SIG_IGN would reap our workers */
	snprintf(name, sizeof(name), "%.12s-fs", cx->name);
	prctl(PR_SET_NAME, name);
	fs.ppidfd = ctp__pidfd_open(cx->parent);
	if (fs.ppidfd < 0 || getppid() != cx->parent)
		_exit(0);
	fs.kids = calloc(cx->n, sizeof(*fs.kids));
	pf = calloc(cx->n + 2, sizeof(*pf));
	if (fs.kids == NULL || pf == NULL)
		_exit(1);
	fs.spare.pid = 0;
	for (int k = 0; k < 4; k++)
		fs.spare.give[k] = -1;
	/* the first workers: one HELLO each (a = -errno on failure) */
	for (unsigned i = 0; i < cx->n; i++) {
		struct ctp__msg m = { .type = CTP__MSG_HELLO };

		m.a = make_worker(&fs.kids[i]);
		if (m.a != 0) {
			fs.kids[i].pid = 0;
			(void)ctp__msg_send(ctl, &m, NULL, 0, NULL, 0);
			server_exit();
		}
		hand_out(ctl, &m, &fs.kids[i]);
	}
	refill_spare();
	for (;;) {
		unsigned i;
		int n;

		pf[0] = (struct pollfd){ .fd = ctl, .events = POLLIN };
		pf[1] = (struct pollfd){ .fd = fs.ppidfd, .events = POLLIN };
		for (i = 0; i < cx->n; i++)
			pf[2 + i] = (struct pollfd){
			    .fd = fs.kids[i].pid != 0 ? fs.kids[i].pidfd : -1,
			    .events = POLLIN };
		n = poll(pf, cx->n + 2, fs.spare.pid == 0 ? 100 : -1);
		if (n < 0)
			continue; /* EINTR */
		if (pf[1].revents != 0)
			server_exit(); /* the parent died */
		if (pf[0].revents != 0) {
			struct ctp__msg m;

			if (ctp__msg_recv(ctl, &m, NULL, 0, NULL, NULL, NULL) != 0 ||
			    m.type != CTP__MSG_SPAWN || m.a < 0 ||
			    (unsigned)m.a >= cx->n)
				server_exit(); /* EXIT, EOF or garbage */
			i = (unsigned)m.a;
			m = (struct ctp__msg){ .type = CTP__MSG_HELLO };
			if (fs.kids[i].pid != 0) {
				/* the parent lost it (it could not map the
				 * replacement's page): a fresh one */
				siginfo_t si;

				ctp__pidfd_kill(fs.kids[i].pidfd);
				close_fd(&fs.kids[i].w);
				reap(&fs.kids[i], &si);
			}
			if ((m.a = take_worker(&fs.kids[i])) == 0)
				hand_out(ctl, &m, &fs.kids[i]);
			else
				(void)ctp__msg_send(ctl, &m, NULL, 0, NULL, 0);
			refill_spare();
		}
		for (i = 0; i < cx->n; i++) {
			struct child *c = &fs.kids[i];
			struct ctp__msg m = { .type = CTP__MSG_DIED };
			siginfo_t si;
			int w;

			if (c->pid == 0 || pf[2 + i].revents == 0)
				continue;
			w = fs.old_w = c->w;
			reap(c, &si);
			m.b = si.si_code;
			m.c = si.si_status;
			/* after everything the worker sent: one ordered stream */
			if ((m.a = take_worker(c)) == 0)
				hand_out(w, &m, c);
			else
				(void)ctp__msg_send(w, &m, NULL, 0, NULL, 0);
			/* empty its queue (a RUN it never read) before the
			 * close: a unix socket closed with unread data makes
			 * the peer's next read fail with ECONNRESET */
			while (recv(w, NULL, 0, MSG_DONTWAIT | MSG_TRUNC) > 0)
				;
			close(w);
			fs.old_w = -1;
			refill_spare();
		}
		if (fs.spare.pid == 0)
			refill_spare();
	}
}

/* ---- the parent's side -------------------------------------------------- */

static void proc_init(struct ctp__proc *p)
{
	p->sock = p->pidfd = p->efd = -1;
	p->page = NULL;
	p->pid = 0;
}

int ctp__proc_adopt(struct ctp__proc *p, const struct ctp__msg *m,
                    const int *fds, int nfds)
{
	void *page;

	if (nfds != 4) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return -EPROTO;
	}
	page = mmap(NULL, CTP__PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
	    fds[2], 0);
	close(fds[2]);
	if (page == MAP_FAILED) {
		int r = -errno;

		ctp__pidfd_kill(fds[1]);
		close(fds[0]);
		close(fds[1]);
		close(fds[3]);
		return r;
	}
	p->sock = fds[0];
	p->pidfd = fds[1];
	p->page = page;
	p->efd = fds[3];
	p->pid = (pid_t)m->u;
	return 0;
}

void ctp__proc_close(struct ctp__proc *p)
{
	close_fd(&p->sock);
	close_fd(&p->pidfd);
	close_fd(&p->efd);
	if (p->page != NULL)
		munmap(p->page, CTP__PAGE_SIZE);
	proc_init(p);
}

/* A HELLO on the control socket into *p: 0 or -errno. */
static int hello(struct ctp__server *s, struct ctp__proc *p)
{
	struct ctp__msg m;
	int fds[CTP__MSG_MAXFDS], nfds = CTP__MSG_MAXFDS, r;

	r = ctp__msg_recv(s->ctl, &m, NULL, 0, NULL, fds, &nfds);
	if (r == 0 && m.type != CTP__MSG_HELLO)
		r = -EPROTO;
	if (r == 0 && m.a != 0)
		r = m.a;
	if (r != 0) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return r;
	}
	return ctp__proc_adopt(p, &m, fds, nfds);
}

int ctp__server_start(struct ctp__server *s, const struct ctp__spawn_ctx *cx,
                      struct ctp__proc *procs)
{
	int sv[2], r;
	unsigned i;
	pid_t pid;

	s->ctl = s->pidfd = -1;
	s->pid = 0;
	for (i = 0; i < cx->n; i++)
		proc_init(&procs[i]);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
		return -errno;
	fflush(NULL); /* no pending stdio output is copied into the children */
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(sv[0]);
		close(sv[1]);
		return r;
	}
	if (pid == 0) {
		close(sv[0]);
		server_main(cx, sv[1]);
	}
	close(sv[1]);
	s->ctl = sv[0];
	s->pid = pid;
	s->pidfd = ctp__pidfd_open(pid); /* our unreaped child: safe */
	if (s->pidfd < 0) {
		r = s->pidfd;
		kill(pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		close(s->ctl);
		s->ctl = -1;
		s->pid = 0;
		return r;
	}
	for (i = 0; i < cx->n; i++) {
		r = hello(s, &procs[i]);
		if (r != 0) {
			while (i-- > 0)
				ctp__proc_close(&procs[i]);
			ctp__server_stop(s);
			return r == -EPIPE || r == -EPROTO ? -EAGAIN : r;
		}
	}
	return 0;
}

int ctp__server_spawn(struct ctp__server *s, unsigned slot,
                      struct ctp__proc *p)
{
	struct ctp__msg m = { .type = CTP__MSG_SPAWN, .a = (int32_t)slot };
	int r;

	pthread_mutex_lock(&s->lock);
	if (s->ctl < 0)
		r = -EAGAIN;
	else if ((r = ctp__msg_send(s->ctl, &m, NULL, 0, NULL, 0)) == 0)
		r = hello(s, p);
	pthread_mutex_unlock(&s->lock);
	return r;
}

void ctp__server_stop(struct ctp__server *s)
{
	struct ctp__msg m = { .type = CTP__MSG_EXIT };
	siginfo_t si;

	pthread_mutex_lock(&s->lock);
	if (s->ctl >= 0) {
		(void)ctp__msg_send(s->ctl, &m, NULL, 0, NULL, 0);
		/* it kills and reaps its workers, then exits */
		while (waitid(P_PIDFD, (id_t)s->pidfd, &si, WEXITED) != 0 &&
		    errno == EINTR)
			;
		/* ECHILD: the application reaped it (waitpid(-1)): it is gone
		 * all the same */
		close_fd(&s->ctl);
		close_fd(&s->pidfd);
		s->pid = 0;
	}
	pthread_mutex_unlock(&s->lock);
}
