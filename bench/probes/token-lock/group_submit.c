/*
 * group_submit: a probe, not a side-by-side benchmark. Two submitter
 * threads each submit N empty tasks to a 2-worker pool, all of them
 * children of one shared parent token (or, with PARENT 0, of none), then
 * wait for the pool to be idle. Every child submit links the task into
 * the parent's children list and every finish unlinks it, each under the
 * parent's token lock, so with a parent that lock is taken by all four
 * threads about twice per task.
 *
 * It was used to choose the token lock's kind (token.c, ext_init): run it
 * under `perf stat -e syscalls:sys_enter_futex,task-clock`, alternating
 * two builds of the library through LD_LIBRARY_PATH.
 *
 * Build and run (from the repository, after `meson setup build-bench
 * --buildtype=release && ninja -C build-bench`):
 *   gcc -O2 -Iinclude bench/probes/token-lock/group_submit.c \
 *       -o /tmp/group_submit -Lbuild-bench -lctpool \
 *       -Wl,-rpath,$PWD/build-bench -lpthread
 *   /tmp/group_submit 500000 1      # N per submitter, PARENT (1 or 0)
 * Output: parent=<0|1> tasks_per_s=<2N / (submits + drain)>
 */
#include <ctpool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static ctp_pool  *pool;
static ctp_token *parent;
static long       n;
static int        use_parent;

static int empty(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

static void *submitter(void *arg)
{
	ctp_task_opts o;

	memset(&o, 0, sizeof(o));
	o.queue_wait = CTP_FOREVER;
	if (use_parent)
		o.parent = parent;
	for (long i = 0; i < n; i++) {
		int r = ctp_pool_submit(pool, empty, NULL, &o, NULL);

		if (r != 0) {
			fprintf(stderr, "ctp_pool_submit: %s\n", strerror(-r));
			exit(1);
		}
	}
	return arg;
}

int main(int argc, char **argv)
{
	ctp_pool_opts po;
	struct timespec a, b;
	pthread_t t[2];
	double s;
	int r;

	if (argc != 3 || (n = atol(argv[1])) <= 0) {
		fprintf(stderr, "usage: group_submit N PARENT(0|1)\n");
		return 2;
	}
	use_parent = atoi(argv[2]) != 0;
	memset(&po, 0, sizeof(po));
	po.threads = 2;
	po.queue_capacity = (size_t)(2 * n);
	if ((r = ctp_pool_create(&pool, &po)) != 0 ||
	    (r = ctp_token_create(&parent, NULL)) != 0) {
		fprintf(stderr, "create: %s\n", strerror(-r));
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, submitter, NULL) != 0)
			return 1;
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	if ((r = ctp_pool_wait_idle(pool, CTP_FOREVER)) != 0) {
		fprintf(stderr, "wait_idle: %s\n", strerror(-r));
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	printf("parent=%d tasks_per_s=%.0f\n", use_parent, (double)(2 * n) / s);
	ctp_token_release(parent);
	return ctp_pool_destroy(pool) == 0 ? 0 : 1;
}
