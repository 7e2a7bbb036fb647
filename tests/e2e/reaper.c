/*
 * reaper: runs a program as the child of a subreaper, and reports what the
 * program left behind when it exited. For the jobserver end-to-end test.
 *
 * Usage: reaper PIDFILE REPORTFILE PROGRAM [ARG...]
 *
 * It makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), forks, and
 * the child writes its pid to PIDFILE (so the test can signal the program
 * itself) and execs PROGRAM with its stdin, stdout and stderr. When the
 * program exits, every process it left, alive or a zombie, at any depth,
 * has been reparented to us by the time waitpid returns its status (the
 * kernel reparents a dying process's children before it notifies its
 * parent). So right after that, waitpid(-1, WNOHANG) tells the truth:
 *   - a pid: a zombie the program never reaped (counted, reaped);
 *   - 0: a live descendant (counted, found in /proc, killed, reaped);
 *   - ECHILD: nothing was left.
 * It writes one line to REPORTFILE:
 *   "exit=N left_alive=A left_zombies=Z"
 * where N is the program's exit code, or 128+signal if a signal ended it,
 * and exits with N.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "reaper: %s: %s\n", what, strerror(errno));
	exit(125);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f == NULL)
		die(path);
	if (fputs(text, f) < 0 || fclose(f) != 0)
		die(path);
}

/* The ppid of pid from /proc/PID/stat, or -1. */
static pid_t ppid_of(pid_t pid)
{
	char path[64], buf[512], *p;
	size_t n;
	FILE *f;
	long ppid;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
	if (p == NULL || sscanf(p + 1, " %*c %ld", &ppid) != 1)
		return -1;
	return (pid_t)ppid;
}

/* Kills every live child of ours (they are what the program left). */
static int kill_children(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		die("/proc");
	while ((e = readdir(d)) != NULL) {
		pid_t pid = (pid_t)atoi(e->d_name);

		if (pid > 0 && ppid_of(pid) == getpid()) {
			kill(pid, SIGKILL);
			n++;
		}
	}
	closedir(d);
	return n;
}

/* Counts what the program left, then kills and reaps all of it (their own
 * children, reparented to us as they die, too), for up to 5 s. */
static void leftovers(int *alive, int *zombies)
{
	pid_t r;

	*alive = *zombies = 0;
	while ((r = waitpid(-1, NULL, WNOHANG)) > 0 ||
	       (r < 0 && errno == EINTR))
		*zombies += r > 0;
	if (r < 0)
		return; /* ECHILD: nothing was left */
	*alive = kill_children();
	for (int i = 0; i < 5000; i++) {
		r = waitpid(-1, NULL, WNOHANG);
		if (r < 0 && errno == ECHILD)
			return;
		if (r == 0) {
			kill_children();
			usleep(1000);
		}
	}
	fprintf(stderr, "reaper: descendants still alive after 5 s\n");
}

int main(int argc, char **argv)
{
	char line[128];
	int status, code, alive, zombies;
	pid_t pid;

	if (argc < 4) {
		fprintf(stderr, "usage: reaper PIDFILE REPORTFILE PROGRAM [ARG...]\n");
		return 2;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
		die("prctl(PR_SET_CHILD_SUBREAPER)");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		snprintf(line, sizeof(line), "%d\n", (int)getpid());
		write_file(argv[1], line);
		execvp(argv[3], argv + 3);
		die(argv[3]);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			die("waitpid");
	}
	code = WIFEXITED(status) ? WEXITSTATUS(status)
	                         : 128 + WTERMSIG(status);
	leftovers(&alive, &zombies);
	snprintf(line, sizeof(line), "exit=%d left_alive=%d left_zombies=%d\n",
	         code, alive, zombies);
	write_file(argv[2], line);
	return code;
}
