/* p5: clone3(CLONE_PIDFD|CLONE_PARENT) from a fork server: workers become children of the parent.
 * Each check prints PASS/FAIL/observed. usage: p5_clone3 */
#include "common.h"
#include <linux/sched.h>
#include <pthread.h>

static pid_t clone3_(uint64_t flags, int *pidfd, int exit_signal) {
	struct clone_args a; memset(&a, 0, sizeof a);
	a.flags = flags; a.pidfd = (uint64_t)(uintptr_t)pidfd; a.exit_signal = exit_signal;
	return syscall(SYS_clone3, &a, sizeof a);
}
/* server: on each byte on ctl, clone3 a worker; send {pid, errno} + pidfd. worker: PDEATHSIG, report ppid, exit(7) on a byte */
static int einval_reported;
static void server(int ctl) {
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	CHECK(write(ctl, "H", 1) == 1); /* hello after prctl */
	for (;;) {
		char c; if (read(ctl, &c, 1) <= 0) _exit(0);
		int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
		int pfd = -1; pid_t pid = clone3_(CLONE_PIDFD | CLONE_PARENT, &pfd, SIGCHLD);
		if (pid < 0 && errno == EINVAL) { if (!einval_reported++) fprintf(stderr, "  [server] clone3(CLONE_PIDFD|CLONE_PARENT, exit_signal=SIGCHLD): EINVAL; retrying with exit_signal=0\n");
			pid = clone3_(CLONE_PIDFD | CLONE_PARENT, &pfd, 0); }
		if (pid == 0) {
			close(sv[0]); prctl(PR_SET_PDEATHSIG, SIGKILL);
			pid_t pp = getppid(); CHECK(write(sv[1], &pp, sizeof pp) == sizeof pp);
			char b; if (read(sv[1], &b, 1) <= 0) _exit(8);
			_exit(7);
		}
		int msg[2] = { pid, pid < 0 ? errno : 0 };
		close(sv[1]);
		if (pid < 0) { send_fds(ctl, NULL, 0, msg, sizeof msg); close(sv[0]); continue; }
		int fds[2] = { pfd, sv[0] }; send_fds(ctl, fds, 2, msg, sizeof msg); close(pfd); close(sv[0]);
	}
}
static int ctl;
static pid_t spawn(int *pfd, int *s) {
	CHECK(write(ctl, "x", 1) == 1); int msg[2], fds[2];
	int n = recv_fds(ctl, fds, 2, msg, sizeof msg);
	if (msg[0] < 0) { printf("  clone3 failed in server: %s\n", strerror(msg[1])); return -1; }
	CHECK(n == 2); *pfd = fds[0]; *s = fds[1]; return msg[0];
}
static pid_t server_pid;
static int start_server(int exit_signal) {
	int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
	int pfd; pid_t p = exit_signal == SIGCHLD ? fork() : clone3_(0, &pfd, exit_signal);
	CHECK(p >= 0); if (p == 0) { close(sv[0]); server(sv[1]); _exit(0); }
	close(sv[1]); server_pid = p; char h; CHECK(read(sv[0], &h, 1) == 1 && h == 'H'); return sv[0];
}
static void stop_server(int wflags) { close(ctl); int st; CHECK(waitpid(server_pid, &st, wflags) == server_pid); }
static void wait_zombie(pid_t pid) { /* poll /proc until state Z */
	char path[64], buf[256]; snprintf(path, sizeof path, "/proc/%d/stat", pid);
	for (int i = 0; i < 10000; i++) { FILE *f = fopen(path, "r"); if (!f) return; CHECK(fgets(buf, sizeof buf, f)); fclose(f);
		if (strstr(buf, ") Z ")) return;
		usleep(100); }
	CHECK(0);
}
static volatile sig_atomic_t got_chld;
static void on_chld(int s) { (void)s; got_chld++; }

static void scenario(const char *title, int server_exit_signal, int steal, int ign) {
	printf("%s\n", title);
	ctl = start_server(server_exit_signal);
	struct sigaction sa = { 0 }; sa.sa_handler = ign ? SIG_IGN : on_chld; sigaction(SIGCHLD, &sa, NULL); got_chld = 0;
	int pfd, s; pid_t pid = spawn(&pfd, &s); if (pid < 0) { sa.sa_handler = SIG_DFL; sigaction(SIGCHLD, &sa, NULL); stop_server(__WALL); return; }
	pid_t pp; CHECK(read(s, &pp, sizeof pp) == sizeof pp);
	printf("  worker pid %d: getppid()=%d, parent=%d, server=%d -> %s\n", pid, pp, getpid(), server_pid, pp == getpid() ? "child of the parent (PASS)" : "NOT child of the parent");
	CHECK(write(s, "q", 1) == 1);
	struct pollfd p = { pfd, POLLIN, 0 }; CHECK(poll(&p, 1, 5000) == 1);
	wait_zombie(pid); usleep(2000);
	printf("  SIGCHLD delivered to the parent: %s\n", got_chld ? "yes" : "no");
	if (steal) { int st; pid_t r = waitpid(-1, &st, WNOHANG);
		printf("  application's waitpid(-1, WNOHANG): %d%s\n", r, r == pid ? " = OUR WORKER (status stolen)" : r < 0 ? (errno == ECHILD ? " ECHILD" : " error") : r == 0 ? " (nothing)" : ""); }
	siginfo_t si; memset(&si, 0, sizeof si);
	int r = waitid(P_PIDFD, pfd, &si, WEXITED | WNOHANG);
	printf("  waitid(P_PIDFD, WEXITED): %s", r == 0 && si.si_pid == pid ? "reaped" : r == 0 ? "nothing yet" : strerror(errno));
	if (r == 0 && si.si_pid == pid) printf(" code=%d status=%d", si.si_code, si.si_status);
	printf("\n");
	if (!(r == 0 && si.si_pid == pid)) {
		memset(&si, 0, sizeof si); r = waitid(P_PIDFD, pfd, &si, WEXITED | __WALL | WNOHANG);
		printf("  waitid(P_PIDFD, WEXITED|__WALL): %s code=%d status=%d\n", r == 0 && si.si_pid == pid ? "reaped" : strerror(errno), si.si_code, si.si_status);
	}
	close(pfd); close(s);
	sa.sa_handler = SIG_DFL; sigaction(SIGCHLD, &sa, NULL);
	stop_server(__WALL);
}
static void *thr(void *a) { (void)a; ctl = start_server(SIGCHLD); return NULL; }

int main(void) {
	struct utsname_ { char s[6][65]; } u; syscall(SYS_uname, &u); printf("kernel %s\n", u.s[2]);
	scenario("A. server forked normally (exit_signal SIGCHLD), worker clone3(CLONE_PIDFD|CLONE_PARENT):", SIGCHLD, 0, 0);
	scenario("B. as A, application calls waitpid(-1) before us:", SIGCHLD, 1, 0);
	scenario("C. as A, application has SIGCHLD = SIG_IGN:", SIGCHLD, 0, 1);
	scenario("D. server created by clone3 exit_signal=0 -> workers inherit exit_signal 0:", 0, 0, 0);
	scenario("E. as D, application calls waitpid(-1) before us:", 0, 1, 0);
	scenario("F. as D, application has SIGCHLD = SIG_IGN:", 0, 0, 1);
	/* G: PDEATHSIG is tied to the creating THREAD */
	printf("G. fork server (PDEATHSIG SIGKILL) forked by a pthread that then exits:\n");
	pthread_t t; CHECK(pthread_create(&t, NULL, thr, NULL) == 0); CHECK(pthread_join(t, NULL) == 0);
	usleep(20000);
	int pfd = pidfd_open_(server_pid, 0); siginfo_t si; memset(&si, 0, sizeof si);
	int r = waitid(P_PIDFD, pfd, &si, WEXITED | WNOHANG);
	printf("  server after the creating thread exited: %s\n", r == 0 && si.si_pid == server_pid ? (si.si_code == CLD_KILLED ? "KILLED by its PDEATHSIG (pitfall)" : "exited") : "alive");
	if (!(r == 0 && si.si_pid == server_pid)) { close(ctl); waitpid(server_pid, NULL, 0); }
	CHECK(waitpid(-1, NULL, WNOHANG | __WALL) == -1 && errno == ECHILD);
	printf("no child left\n");
	return 0;
}
