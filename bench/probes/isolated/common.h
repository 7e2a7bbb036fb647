/* common helpers for iso-probe: timing, stats, pidfd syscalls, fd passing */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d CHECK failed: %s (errno %d %s)\n", __FILE__, __LINE__, #c, errno, strerror(errno)); exit(2);} } while (0)

static inline uint64_t now_ns(void) {
	struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}
static int cmp_u64(const void *a, const void *b) {
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y;
}
/* prints name n p50 p99 min max in microseconds */
static void report(const char *name, uint64_t *v, int n) {
	qsort(v, n, sizeof *v, cmp_u64);
	printf("%-48s n=%-5d p50=%9.2f us  p99=%9.2f us  min=%9.2f us  max=%9.2f us\n", name, n,
	       v[n / 2] / 1e3, v[(int)(n * 0.99)] / 1e3, v[0] / 1e3, v[n - 1] / 1e3);
	fflush(stdout);
}
static inline int pidfd_open_(pid_t pid, unsigned fl) { return syscall(SYS_pidfd_open, pid, fl); }
static inline int pidfd_kill(int pfd, int sig) { return syscall(SYS_pidfd_send_signal, pfd, sig, NULL, 0); }
static inline long futex(void *a, int op, int val, const struct timespec *to) {
	return syscall(SYS_futex, a, op, val, to, NULL, 0);
}
__attribute__((unused)) static void send_fds(int s, const int *fds, int n, const void *data, size_t len) {
	char cbuf[CMSG_SPACE(sizeof(int) * 8)]; memset(cbuf, 0, sizeof cbuf);
	struct iovec iov = { (void *)data, len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (n) { m.msg_control = cbuf; m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m); c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * n); memcpy(CMSG_DATA(c), fds, sizeof(int) * n); }
	CHECK(sendmsg(s, &m, 0) == (ssize_t)len);
}
/* returns number of fds received */
__attribute__((unused)) static int recv_fds(int s, int *fds, int max, void *data, size_t len) {
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { data, len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
	ssize_t r = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
	CHECK(r == (ssize_t)len);
	int n = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_type == SCM_RIGHTS) { n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); CHECK(n <= max); memcpy(fds, CMSG_DATA(c), n * sizeof(int)); }
	return n;
}
__attribute__((unused)) static void full_write(int fd, const void *p, size_t n) {
	while (n) { ssize_t r = write(fd, p, n); if (r < 0 && errno == EINTR) continue; CHECK(r > 0); p = (const char *)p + r; n -= r; }
}
__attribute__((unused)) static void full_read(int fd, void *p, size_t n) {
	while (n) { ssize_t r = read(fd, p, n); if (r < 0 && errno == EINTR) continue; CHECK(r > 0); p = (char *)p + r; n -= r; }
}
__attribute__((unused)) static long rss_kb(void) {
	FILE *f = fopen("/proc/self/status", "r"); char l[256]; long v = -1;
	while (fgets(l, sizeof l, f)) if (!strncmp(l, "VmRSS:", 6)) v = atol(l + 6);
	fclose(f); return v;
}
