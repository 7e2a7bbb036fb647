/* p4: replacement time.
 * fserver HEAP_MB: ask a running single-threaded fork server (HEAP_MB touched heap) for a new worker
 *                  (PDEATHSIG + ppid check, reports ready); time until we hold pidfd + socket and the worker answered a ping
 * fork HEAP_MB:    fork() + _exit(0) + waitpid in this process, HEAP_MB touched heap (the physical floor)
 * spawn:           posix_spawn(/bin/true) + waitpid
 * usage: p4_replace MODE [HEAP_MB] [iters] */
#include "common.h"
#include "fs.h"
#include <spawn.h>
extern char **environ;

int main(int argc, char **argv) {
	const char *mode = argc > 1 ? argv[1] : "fserver";
	size_t heap = argc > 2 ? strtoul(argv[2], 0, 10) : 10;
	int iters = argc > 3 ? atoi(argv[3]) : 2000, warm = 50;
	uint64_t *t = malloc(8 * iters);
	long rss = 0; char name[96];
	if (!strcmp(mode, "fserver")) {
		pid_t fsp; int ctl = start_fork_server(heap, &fsp, &rss);
		for (int i = 0; i < warm + iters; i++) {
			uint64_t t0 = now_ns();
			struct fsmsg rq = { FS_SPAWN_PING }, sp; int fds[2]; char c;
			CHECK(write(ctl, &rq, sizeof rq) == sizeof rq);
			CHECK(recv_fds(ctl, fds, 2, &sp, sizeof sp) == 2); CHECK(sp.kind == FS_SPAWNED);
			CHECK(read(fds[1], &c, 1) == 1 && c == 'R');
			c = 'p'; CHECK(write(fds[1], &c, 1) == 1); CHECK(read(fds[1], &c, 1) == 1 && c == 'p');
			uint64_t t1 = now_ns();
			CHECK(pidfd_kill(fds[0], SIGKILL) == 0);
			struct fsmsg st; CHECK(read(ctl, &st, sizeof st) == sizeof st);
			CHECK(st.kind == FS_STATUS && st.pid == sp.pid && st.status == SIGKILL);
			close(fds[0]); close(fds[1]);
			if (i >= warm) t[i - warm] = t1 - t0;
		}
		close(ctl); CHECK(waitpid(fsp, NULL, 0) == fsp);
		snprintf(name, sizeof name, "p4 replace via fork server, server RSS %ld MB", rss >> 10);
	} else if (!strcmp(mode, "fork")) {
		if (heap) { char *h = malloc(heap << 20); CHECK(h); memset(h, 1, heap << 20); __asm__ volatile("" ::"r"(h) : "memory"); }
		rss = rss_kb();
		for (int i = 0; i < warm + iters; i++) {
			uint64_t t0 = now_ns(); pid_t p = fork(); CHECK(p >= 0); if (p == 0) _exit(0);
			int st; CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
			if (i >= warm) t[i - warm] = now_ns() - t0;
		}
		snprintf(name, sizeof name, "p4 fork+_exit+waitpid, RSS %ld MB", rss >> 10);
	} else {
		rss = rss_kb();
		for (int i = 0; i < warm + iters; i++) {
			uint64_t t0 = now_ns(); pid_t p; char *av[] = { "/bin/true", NULL };
			CHECK(posix_spawn(&p, "/bin/true", NULL, NULL, av, environ) == 0);
			int st; CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
			if (i >= warm) t[i - warm] = now_ns() - t0;
		}
		snprintf(name, sizeof name, "p4 posix_spawn /bin/true+waitpid, RSS %ld MB", rss >> 10);
	}
	report(name, t, iters);
	CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD);
	return 0;
}
