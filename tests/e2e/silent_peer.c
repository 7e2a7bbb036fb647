/*
 * silent_peer: a TCP listener for the jobserver end-to-end test.
 *
 * It binds 127.0.0.1 on an ephemeral port, prints "port N" on stdout (one
 * flushed line) and accepts connections until it is killed:
 *   - by default it never writes to a connection and keeps it open, so a
 *     fetch job against it blocks in poll() until its token fires;
 *   - with --eof it writes "hello\n" to each connection and closes it, so a
 *     fetch job completes with status 6.
 * It keeps at most MAX_HELD silent connections; beyond that the oldest one
 * is closed to make room. SIGTERM's default action ends it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HELD 1024

static const char greeting[] = "hello\n";

static void die(const char *what)
{
	fprintf(stderr, "silent_peer: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int listen_loopback(void)
{
	struct sockaddr_in addr;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		die("socket");
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(0);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		die("bind");
	if (listen(fd, 128) != 0)
		die("listen");
	return fd;
}

static void print_port(int fd)
{
	struct sockaddr_in addr;
	socklen_t len = sizeof(addr);

	if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0)
		die("getsockname");
	if (printf("port %u\n", (unsigned)ntohs(addr.sin_port)) < 0)
		die("printf");
	if (fflush(stdout) != 0)
		die("fflush");
}

/* Writes the whole greeting; a peer that went away is not an error. */
static void greet_and_close(int conn)
{
	size_t off = 0;

	while (off < sizeof(greeting) - 1) {
		ssize_t n = write(conn, greeting + off, sizeof(greeting) - 1 - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno != EPIPE && errno != ECONNRESET)
				die("write");
			break;
		}
		off += (size_t)n;
	}
	if (close(conn) != 0)
		die("close");
}

static int accept_one(int lfd)
{
	for (;;) {
		int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (conn >= 0)
			return conn;
		/* transient: retry; anything else is a real failure */
		if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
			continue;
		die("accept");
	}
}

int main(int argc, char **argv)
{
	int held[MAX_HELD];
	size_t next = 0, count = 0;
	int eof = 0, lfd;

	if (argc == 2 && strcmp(argv[1], "--eof") == 0) {
		eof = 1;
	} else if (argc != 1) {
		fprintf(stderr, "usage: silent_peer [--eof]\n");
		return 2;
	}
	/* a fetch client that gives up must not kill us with SIGPIPE */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die("signal");
	lfd = listen_loopback();
	print_port(lfd);
	for (;;) {
		int conn = accept_one(lfd);

		if (eof) {
			greet_and_close(conn);
			continue;
		}
		if (count == MAX_HELD) {
			if (close(held[next]) != 0)
				die("close");
		} else {
			count++;
		}
		held[next] = conn;
		next = (next + 1) % MAX_HELD;
	}
}
