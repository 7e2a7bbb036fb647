/* a minimal single-threaded fork server: the parent asks over `ctl` for a worker;
 * the server forks one (PDEATHSIG, checks ppid), gives the parent {pid} + [pidfd, worker socket]
 * via SCM_RIGHTS, polls its workers' pidfds, reaps them and sends {pid, status, t_reaped}. */
struct fsmsg { int32_t kind; int32_t pid; int32_t code, status; uint64_t t; };
enum { FS_SPAWN_PING = 1, FS_SPAWN_SPIN = 2, FS_STATUS = 3, FS_SPAWNED = 4 };
#define FS_MAXW 64
static void worker_main(int s, int spin, pid_t server) {
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) _exit(4);
	if (getppid() != server) _exit(5); /* server died before prctl */
	char c = 'R';
	CHECK(write(s, &c, 1) == 1);
	if (spin) for (;;) __asm__ volatile("");
	for (;;) { ssize_t n = read(s, &c, 1); if (n <= 0) _exit(0); CHECK(write(s, &c, 1) == 1); }
}
static void fork_server(int ctl, size_t heap_mb) {
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (heap_mb) { char *h = malloc(heap_mb << 20); CHECK(h); memset(h, 1, heap_mb << 20); __asm__ volatile("" ::"r"(h) : "memory"); }
	struct fsmsg rep = { 0, 0, 0, 0, (uint64_t)rss_kb() };
	CHECK(write(ctl, &rep, sizeof rep) == sizeof rep); /* hello: RSS in t */
	struct pollfd p[FS_MAXW + 1]; pid_t pids[FS_MAXW + 1]; int n = 1;
	p[0].fd = ctl; p[0].events = POLLIN;
	for (;;) {
		CHECK(poll(p, n, -1) > 0);
		for (int i = 1; i < n; i++) if (p[i].revents) {
			siginfo_t si; memset(&si, 0, sizeof si);
			CHECK(waitid(P_PIDFD, p[i].fd, &si, WEXITED) == 0);
			struct fsmsg st = { FS_STATUS, pids[i], si.si_code, si.si_status, now_ns() };
			CHECK(write(ctl, &st, sizeof st) == sizeof st);
			close(p[i].fd); p[i] = p[n - 1]; pids[i] = pids[n - 1]; n--; i--;
		}
		if (p[0].revents) {
			struct fsmsg rq; ssize_t r = read(ctl, &rq, sizeof rq);
			if (r <= 0) _exit(0);
			CHECK(r == sizeof rq);
			int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
			pid_t me = getpid(), pid = fork(); CHECK(pid >= 0);
			if (pid == 0) { close(ctl); close(sv[0]); worker_main(sv[1], rq.kind == FS_SPAWN_SPIN, me); }
			close(sv[1]);
			int pfd = pidfd_open_(pid, 0); CHECK(pfd >= 0);
			int fds[2] = { pfd, sv[0] };
			struct fsmsg sp = { FS_SPAWNED, pid, 0, 0, 0 };
			send_fds(ctl, fds, 2, &sp, sizeof sp);
			close(sv[0]);
			CHECK(n <= FS_MAXW); p[n].fd = pfd; p[n].events = POLLIN; pids[n] = pid; n++;
		}
	}
}
/* start the fork server; returns ctl socket, fills *fs_pid and *rss_kb of the server */
static int start_fork_server(size_t heap_mb, pid_t *fs_pid, long *fs_rss) {
	int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
	pid_t pid = fork(); CHECK(pid >= 0);
	if (pid == 0) { close(sv[0]); fork_server(sv[1], heap_mb); _exit(0); }
	close(sv[1]);
	struct fsmsg h; CHECK(read(sv[0], &h, sizeof h) == sizeof h);
	*fs_pid = pid; *fs_rss = (long)h.t;
	return sv[0];
}
