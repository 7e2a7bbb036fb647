/* p1: round trip parent <-> already-running worker process.
 * modes: stream | seqpacket | shm (futex each way) | shmev (shm data + eventfd each way, parent polls [efd,pidfd])
 *        big-sock (1 MiB in/out over SOCK_STREAM) | big-memfd (1 MiB in/out via a shared memfd, 16-byte msg on socket)
 * usage: p1_rt MODE [iters] */
#include "common.h"
#include <sys/eventfd.h>

struct req { uint64_t fn, len; };
struct shm { _Atomic uint32_t req_seq; uint32_t pad1[15]; _Atomic uint32_t resp_seq; uint32_t pad2[15]; struct req r; };
#define BIG (1u << 20)

static void worker_stream(int s) {
	struct req r;
	char *buf = malloc(BIG), *out = malloc(BIG);
	for (;;) {
		ssize_t n = read(s, &r, sizeof r); if (n == 0) _exit(0); CHECK(n == sizeof r);
		if (r.len) full_read(s, buf, r.len);
		for (size_t i = 0; i < r.len; i++) out[i] = buf[i] ^ 0x5a;
		full_write(s, &r, sizeof r);
		if (r.len) full_write(s, out, r.len);
	}
}
static void worker_seq(int s) {
	struct req r;
	for (;;) { ssize_t n = recv(s, &r, sizeof r, 0); if (n == 0) _exit(0); CHECK(n == sizeof r); CHECK(send(s, &r, sizeof r, 0) == sizeof r); }
}
static void worker_shm(struct shm *m) {
	uint32_t seen = 0;
	for (;;) {
		while (atomic_load(&m->req_seq) == seen) futex(&m->req_seq, FUTEX_WAIT, seen, NULL);
		seen = atomic_load(&m->req_seq);
		if (m->r.fn == 0) _exit(0);
		atomic_store(&m->resp_seq, seen);
		futex(&m->resp_seq, FUTEX_WAKE, 1, NULL);
	}
}
static void worker_shmev(struct shm *m, int e_req, int e_resp) {
	uint64_t v;
	for (;;) { CHECK(read(e_req, &v, 8) == 8); if (m->r.fn == 0) _exit(0); atomic_store(&m->resp_seq, atomic_load(&m->req_seq)); v = 1; CHECK(write(e_resp, &v, 8) == 8); }
}
static void worker_bigmemfd(int s, char *in, char *out) {
	struct req r;
	for (;;) {
		ssize_t n = read(s, &r, sizeof r); if (n == 0) _exit(0); CHECK(n == sizeof r);
		for (size_t i = 0; i < r.len; i++) out[i] = in[i] ^ 0x5a;
		full_write(s, &r, sizeof r);
	}
}

static void wait_poll(int fd, int pidfd) {
	struct pollfd p[2] = { { fd, POLLIN, 0 }, { pidfd, POLLIN, 0 } };
	for (;;) { int r = poll(p, 2, -1); if (r < 0 && errno == EINTR) continue; CHECK(r > 0); CHECK(!(p[1].revents)); if (p[0].revents & POLLIN) return; CHECK(0); }
}

int main(int argc, char **argv) {
	const char *mode = argc > 1 ? argv[1] : "stream";
	int iters = argc > 2 ? atoi(argv[2]) : 20000, warm = 1000;
	int sv[2] = { -1, -1 };
	int big = !strncmp(mode, "big", 3);
	if (!strcmp(mode, "seqpacket")) CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
	else CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	int mfd = memfd_create("iso", MFD_CLOEXEC); CHECK(mfd >= 0);
	CHECK(ftruncate(mfd, 4096 + 2 * BIG) == 0);
	char *map = mmap(NULL, 4096 + 2 * BIG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0); CHECK(map != MAP_FAILED);
	struct shm *m = (struct shm *)map; char *min = map + 4096, *mout = map + 4096 + BIG;
	int e_req = eventfd(0, EFD_CLOEXEC), e_resp = eventfd(0, EFD_CLOEXEC);
	pid_t pid = fork(); CHECK(pid >= 0);
	if (pid == 0) {
		close(sv[0]); prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (!strcmp(mode, "stream") || !strcmp(mode, "big-sock")) worker_stream(sv[1]);
		else if (!strcmp(mode, "seqpacket")) worker_seq(sv[1]);
		else if (!strcmp(mode, "shm")) worker_shm(m);
		else if (!strcmp(mode, "shmev")) worker_shmev(m, e_req, e_resp);
		else if (!strcmp(mode, "big-memfd")) worker_bigmemfd(sv[1], min, mout);
		_exit(3);
	}
	close(sv[1]);
	int pidfd = pidfd_open_(pid, 0); CHECK(pidfd >= 0);
	if (big && argc <= 2) iters = 2000;
	if (big) warm = 50;
	uint64_t *t = malloc(sizeof(uint64_t) * iters);
	char *in = malloc(BIG), *out = malloc(BIG);
	for (int i = 0; i < warm + iters; i++) {
		struct req r = { 0x1234, big ? BIG : 0 };
		if (big) { memset(in, (char)i, BIG); in[i % BIG] = 7; } /* vary content */
		uint64_t t0 = now_ns();
		if (!strcmp(mode, "stream")) {
			full_write(sv[0], &r, sizeof r); wait_poll(sv[0], pidfd); full_read(sv[0], &r, sizeof r); CHECK(r.fn == 0x1234);
		} else if (!strcmp(mode, "seqpacket")) {
			CHECK(send(sv[0], &r, sizeof r, 0) == sizeof r); wait_poll(sv[0], pidfd); CHECK(recv(sv[0], &r, sizeof r, 0) == sizeof r); CHECK(r.fn == 0x1234);
		} else if (!strcmp(mode, "shm")) {
			m->r = r; uint32_t s = atomic_fetch_add(&m->req_seq, 1) + 1;
			futex(&m->req_seq, FUTEX_WAKE, 1, NULL);
			while (atomic_load(&m->resp_seq) != s) futex(&m->resp_seq, FUTEX_WAIT, atomic_load(&m->resp_seq) == s ? s : atomic_load(&m->resp_seq), NULL);
		} else if (!strcmp(mode, "shmev")) {
			m->r = r; uint32_t s = atomic_fetch_add(&m->req_seq, 1) + 1; uint64_t v = 1;
			CHECK(write(e_req, &v, 8) == 8); wait_poll(e_resp, pidfd); CHECK(read(e_resp, &v, 8) == 8); CHECK(atomic_load(&m->resp_seq) == s);
		} else if (!strcmp(mode, "big-sock")) {
			full_write(sv[0], &r, sizeof r); full_write(sv[0], in, BIG);
			wait_poll(sv[0], pidfd); full_read(sv[0], &r, sizeof r); CHECK(r.len == BIG); full_read(sv[0], out, BIG);
		} else if (!strcmp(mode, "big-memfd")) {
			memcpy(min, in, BIG); full_write(sv[0], &r, sizeof r); wait_poll(sv[0], pidfd);
			full_read(sv[0], &r, sizeof r); CHECK(r.len == BIG); memcpy(out, mout, BIG);
		} else { fprintf(stderr, "bad mode\n"); return 2; }
		uint64_t t1 = now_ns();
		if (big) for (size_t k = 0; k < BIG; k++) CHECK(out[k] == (char)(in[k] ^ 0x5a));
		if (i >= warm) t[i - warm] = t1 - t0;
	}
	char name[64]; snprintf(name, sizeof name, "p1 round trip %s%s", mode, big ? " (1 MiB in+out, verified)" : "");
	report(name, t, iters);
	if (!strcmp(mode, "shm") || !strcmp(mode, "shmev")) { m->r.fn = 0; atomic_fetch_add(&m->req_seq, 1); futex(&m->req_seq, FUTEX_WAKE, 1, NULL); uint64_t v = 1; CHECK(write(e_req, &v, 8) == 8); }
	close(sv[0]);
	siginfo_t si; CHECK(waitid(P_PIDFD, pidfd, &si, WEXITED) == 0); CHECK(si.si_code == CLD_EXITED && si.si_status == 0);
	printf("   worker exited 0, bytes verified: %s\n", big ? "yes" : "n/a");
	return 0;
}
