/*
 * fork() with live objects (issue 9, item 17), and the version (item 9).
 *
 * The contract (include/ctpool.h, "fork"): in a child of fork(), every call
 * that would lock, wait or write a shared fd on a pool, task handle, token,
 * watch or queue made before the fork returns -ECHILD (void calls do
 * nothing); objects made in the child work as usual. The parent is not
 * disturbed: its token's fd does not become readable because the child
 * tried to cancel its copy.
 *
 * The child reports through its exit code: 0 when every check held, else
 * the number of the first check that failed. Skipped under ThreadSanitizer
 * (fork in a multithreaded process is unsupported there).
 */
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures.h"

#if defined(__SANITIZE_THREAD__)
#define FORK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FORK_TSAN 1
#endif
#endif

static void test_fork_version(void **state)
{
	(void)state;
	assert_int_equal(ctp_version(), CTP_VERSION_NUM);
	assert_int_equal(CTP_VERSION_NUM >> 16, CTP_VERSION_MAJOR);
	assert_int_equal((CTP_VERSION_NUM >> 8) & 0xff, CTP_VERSION_MINOR);
	assert_int_equal(CTP_VERSION_NUM & 0xff, CTP_VERSION_PATCH);
	assert_string_not_equal(ctp_strerror(-ECHILD), strerror(ECHILD));
}

#if !defined(FORK_TSAN)

static void noop_watch(void *arg)
{
	(void)arg;
}

/* Runs in the child: every call on an object from before the fork. */
static int child_checks(ctp_pool *pool, ctp_task *held, ctp_token *tok,
                        ctp_watch *watch, ctp_queue *q)
{
	ctp_token *child_tok;
	ctp_watch *w;
	ctp_pool  *fresh;
	ctp_task  *t;
	void      *item;
	int        status = UNSET;
	struct rec r;

	if (ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL) != -ECHILD)
		return 1;
	if (ctp_task_cancel(held) != -ECHILD)
		return 2;
	if (ctp_task_wait(held, 0, &status) != -ECHILD)
		return 3;
	if (ctp_token_cancel(tok) != -ECHILD)
		return 4;
	if (ctp_token_fd(tok) != -ECHILD)
		return 5;
	if (ctp_token_sleep(tok, CTP_SEC(60)) != -ECHILD)
		return 6;
	if (ctp_token_watch(tok, noop_watch, NULL, &w) != -ECHILD)
		return 7;
	if (ctp_token_create(&child_tok, tok) != -ECHILD)
		return 8;
	if (ctp_queue_push(q, NULL, NULL, CTP_FOREVER) != -ECHILD)
		return 9;
	if (ctp_queue_pop(q, &item, NULL, CTP_FOREVER) != -ECHILD)
		return 10;
	if (ctp_pool_wait_idle(pool, CTP_FOREVER) != -ECHILD)
		return 11;
	if (ctp_pool_shutdown(pool, CTP_FOREVER, CTP_FOREVER) != -ECHILD)
		return 12;
	if (ctp_pool_destroy(pool) != -ECHILD)
		return 13;
	/* void calls: nothing happens, nothing hangs */
	ctp_token_unwatch(watch);
	ctp_token_release(tok);
	ctp_task_release(held);
	/* reads of a snapshot still work */
	if (ctp_token_cancelled(tok) || ctp_task_state(held) != CTP_TASK_RUNNING)
		return 14;
	/* objects made in the child work */
	rec_init(&r, 5);
	if (ctp_pool_create(&fresh, &(ctp_pool_opts){ .threads = 1 }) != 0)
		return 15;
	if (submit_rec(fresh, &r, NO_OPTS, &t) != 0)
		return 16;
	if (ctp_task_wait(t, BOUND, &status) != 0 || status != 5)
		return 17;
	ctp_task_release(t);
	if (ctp_token_create(&child_tok, NULL) != 0 ||
	    ctp_token_cancel(child_tok) != 0)
		return 18;
	ctp_token_release(child_tok);
	if (ctp_pool_destroy(fresh) != 0)
		return 19;
	return 0;
}

static void test_fork_child_gets_echild(void **state)
{
	ctp_pool     *pool = pool_new(2, 0);
	struct parked p;
	ctp_task     *held;
	ctp_token    *tok;
	ctp_watch    *watch;
	ctp_queue    *q;
	struct pollfd pfd;
	pid_t         pid;
	int           ws, fd, status = UNSET;

	(void)state;
	parked_init(&p, 6);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &held), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(ctp_token_create(&tok, NULL), 0);
	fd = ctp_token_fd(tok);
	assert_true(fd >= 0);
	assert_int_equal(ctp_token_watch(tok, noop_watch, NULL, &watch), 0);
	assert_int_equal(ctp_queue_create(&q, 4), 0);

	fflush(NULL); /* the child must not flush our buffers again */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_checks(pool, held, tok, watch, q));
	ws = tu_reap(pid, BOUND);
	assert_true(ws != -1 && WIFEXITED(ws));
	assert_int_equal(WEXITSTATUS(ws), 0);

	/* the parent's token did not fire, and its fd was not written */
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, 0), 0);
	assert_false(ctp_token_cancelled(tok));
	/* the parent's objects go on working */
	assert_int_equal(ctp_token_cancel(tok), 0);
	assert_int_equal(poll(&pfd, 1, 0), 1);
	assert_int_equal(ctp_queue_push(q, &p, NULL, 0), 0);
	unpark(&p, 1);
	assert_int_equal(ctp_task_wait(held, BOUND, &status), 0);
	assert_int_equal(status, 6);
	ctp_task_release(held);
	ctp_token_unwatch(watch);
	ctp_token_release(tok);
	ctp_queue_destroy(q);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&p);
}

#endif /* !FORK_TSAN */

static void test_fork_skip_note(void **state)
{
	(void)state;
#if defined(FORK_TSAN)
	print_message("fork cases skipped under TSan (fork in a multithreaded "
	              "process is unsupported there)\n");
	skip();
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_version),
#if !defined(FORK_TSAN)
		cmocka_unit_test(test_fork_child_gets_echild),
#endif
		cmocka_unit_test(test_fork_skip_note),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
