/* p2: wake a token in the worker process from the parent; latency parent-write -> sleeper awake.
 * modes: futex2   shared futex word -> helper thread FUTEX_WAIT -> private futex wake of sleeper (2 hops)
 *        sock2    message on a dedicated socket read by helper thread -> private futex wake of sleeper (2 hops)
 *        eventfd  eventfd passed by SCM_RIGHTS, sleeper poll()s it directly (1 hop)
 *        futex1   (reference) sleeper FUTEX_WAITs on the shared word itself (1 hop)
 * usage: p2_wake MODE [iters] */
#include "common.h"
#include <pthread.h>
#include <sys/eventfd.h>

struct shm { _Atomic uint32_t seq; uint32_t p0[15]; _Atomic uint32_t ready; uint32_t p1[15];
	_Atomic uint32_t done; uint32_t p2[15]; _Atomic uint64_t t_fire, t_awake; };
static struct shm *m; static const char *mode; static int wsock = -1, wefd = -1;
static _Atomic uint32_t token; /* private token word in the worker */

static void *helper(void *a) {
	(void)a; uint32_t last = 0;
	for (;;) {
		uint32_t s;
		if (!strcmp(mode, "futex2")) {
			while ((s = atomic_load(&m->seq)) == last) futex(&m->seq, FUTEX_WAIT, last, NULL);
		} else { ssize_t n = read(wsock, &s, 4); if (n <= 0) _exit(0); CHECK(n == 4); }
		last = s;
		atomic_store(&token, s);
		futex(&token, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL);
	}
	return NULL;
}
static void worker(void) {
	pthread_t th;
	if (!strcmp(mode, "futex2") || !strcmp(mode, "sock2")) CHECK(pthread_create(&th, NULL, helper, NULL) == 0);
	if (!strcmp(mode, "eventfd")) { int fd; char c; CHECK(recv_fds(wsock, &fd, 1, &c, 1) == 1); wefd = fd; }
	for (uint32_t gen = 0;; gen++) {
		atomic_store(&m->ready, gen + 1);
		if (!strcmp(mode, "futex2") || !strcmp(mode, "sock2")) {
			while (atomic_load(&token) == gen) futex(&token, FUTEX_WAIT_PRIVATE, gen, NULL);
		} else if (!strcmp(mode, "futex1")) {
			while (atomic_load(&m->seq) == gen) futex(&m->seq, FUTEX_WAIT, gen, NULL);
		} else {
			struct pollfd p = { wefd, POLLIN, 0 }; CHECK(poll(&p, 1, -1) == 1);
		}
		atomic_store(&m->t_awake, now_ns());
		if (!strcmp(mode, "eventfd")) { uint64_t v; CHECK(read(wefd, &v, 8) == 8); }
		atomic_store(&m->done, gen + 1);
		futex(&m->done, FUTEX_WAKE, 1, NULL);
	}
}

int main(int argc, char **argv) {
	mode = argc > 1 ? argv[1] : "futex2";
	int iters = argc > 2 ? atoi(argv[2]) : 3000, warm = 200;
	int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	int mfd = memfd_create("tok", MFD_CLOEXEC); CHECK(mfd >= 0); CHECK(ftruncate(mfd, 4096) == 0);
	m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0); CHECK(m != MAP_FAILED);
	pid_t pid = fork(); CHECK(pid >= 0);
	if (pid == 0) { close(sv[0]); wsock = sv[1]; prctl(PR_SET_PDEATHSIG, SIGKILL); worker(); _exit(3); }
	close(sv[1]);
	int efd = -1;
	if (!strcmp(mode, "eventfd")) { efd = eventfd(0, EFD_CLOEXEC); CHECK(efd >= 0); send_fds(sv[0], &efd, 1, "e", 1); }
	uint64_t *t = malloc(sizeof(uint64_t) * iters);
	for (int i = 0; i < warm + iters; i++) {
		uint32_t g = i + 1;
		while (atomic_load(&m->ready) != g) usleep(20);
		usleep(100); /* let the sleeper really block */
		atomic_store(&m->t_fire, now_ns());
		if (!strcmp(mode, "futex2") || !strcmp(mode, "futex1")) { atomic_store(&m->seq, g); futex(&m->seq, FUTEX_WAKE, INT32_MAX, NULL); }
		else if (!strcmp(mode, "sock2")) full_write(sv[0], &g, 4);
		else { uint64_t v = 1; CHECK(write(efd, &v, 8) == 8); }
		while (atomic_load(&m->done) != g) futex(&m->done, FUTEX_WAIT, g - 1, NULL);
		uint64_t d = atomic_load(&m->t_awake) - atomic_load(&m->t_fire);
		CHECK(d < 10000000000ull);
		if (i >= warm) t[i - warm] = d;
	}
	char name[64]; snprintf(name, sizeof name, "p2 token wake %s", mode);
	report(name, t, iters);
	CHECK(pidfd_kill(pidfd_open_(pid, 0), SIGKILL) == 0); CHECK(waitpid(pid, NULL, 0) == pid);
	return 0;
}
