/* p3: kill latency of a worker spinning in for(;;);
 * mode direct: worker is our child; pidfd_send_signal(SIGKILL) -> pidfd readable -> waitid(P_PIDFD) reaped
 * mode fserver: worker is a child of a single-threaded fork server; we hold a pidfd received by SCM_RIGHTS;
 *               kill -> pidfd readable (ours) -> status message from the server after its waitid
 * usage: p3_kill MODE [iters] */
#include "common.h"
#include "fs.h"

int main(int argc, char **argv) {
	const char *mode = argc > 1 ? argv[1] : "direct";
	int iters = argc > 2 ? atoi(argv[2]) : 2000, warm = 50;
	uint64_t *ta = malloc(8 * iters), *tb = malloc(8 * iters);
	int ctl = -1; pid_t fsp; long fsrss;
	if (!strcmp(mode, "fserver")) ctl = start_fork_server(0, &fsp, &fsrss);
	int ech = 0;
	for (int i = 0; i < warm + iters; i++) {
		int pfd, s; pid_t pid;
		if (ctl < 0) {
			int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
			pid_t me = getpid(); pid = fork(); CHECK(pid >= 0);
			if (pid == 0) { close(sv[0]); worker_main(sv[1], 1, me); }
			close(sv[1]); s = sv[0]; pfd = pidfd_open_(pid, 0); CHECK(pfd >= 0);
		} else {
			struct fsmsg rq = { FS_SPAWN_SPIN }, sp; int fds[2];
			CHECK(write(ctl, &rq, sizeof rq) == sizeof rq);
			CHECK(recv_fds(ctl, fds, 2, &sp, sizeof sp) == 2); CHECK(sp.kind == FS_SPAWNED);
			pfd = fds[0]; s = fds[1]; pid = sp.pid;
		}
		char c; CHECK(read(s, &c, 1) == 1 && c == 'R');
		usleep(300); /* it is spinning now */
		uint64_t t0 = now_ns();
		CHECK(pidfd_kill(pfd, SIGKILL) == 0);
		struct pollfd p = { pfd, POLLIN, 0 }; CHECK(poll(&p, 1, -1) == 1);
		uint64_t t1 = now_ns(), t2;
		if (ctl < 0) {
			siginfo_t si; memset(&si, 0, sizeof si);
			CHECK(waitid(P_PIDFD, pfd, &si, WEXITED) == 0); t2 = now_ns();
			CHECK(si.si_code == CLD_KILLED && si.si_status == SIGKILL && si.si_pid == pid);
		} else {
			siginfo_t si; if (waitid(P_PIDFD, pfd, &si, WEXITED | WNOHANG) < 0 && errno == ECHILD) ech++;
			struct fsmsg st; CHECK(read(ctl, &st, sizeof st) == sizeof st); t2 = now_ns();
			CHECK(st.kind == FS_STATUS && st.pid == pid && st.code == CLD_KILLED && st.status == SIGKILL);
		}
		close(pfd); close(s);
		if (i >= warm) { ta[i - warm] = t1 - t0; tb[i - warm] = t2 - t0; }
	}
	char n1[80], n2[80];
	snprintf(n1, sizeof n1, "p3 kill %s: SIGKILL -> pidfd readable", mode);
	snprintf(n2, sizeof n2, "p3 kill %s: SIGKILL -> %s", mode, ctl < 0 ? "reaped (waitid P_PIDFD)" : "status msg from server");
	report(n1, ta, iters); report(n2, tb, iters);
	if (ctl >= 0) printf("   parent waitid(P_PIDFD) on a non-child pidfd: ECHILD in %d/%d\n", ech, warm + iters);
	/* no child left */
	if (ctl >= 0) { close(ctl); CHECK(waitpid(fsp, NULL, 0) == fsp); }
	CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD);
	printf("   all workers status SIGKILL verified, no child left\n");
	return 0;
}
