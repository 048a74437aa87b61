// build:
/*
 * tcp.c - established TCP connections across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then the
 * child checks its side, the root checks its own and reaps the child, and
 * the root prints PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up over 127.0.0.1, nothing read before the checkpoint:
 *  - the root listens; its child connects and sends 3 MiB of patterned
 *    bytes, more than the buffers hold: some wait in the root's receive
 *    queue, some in the child's send queue, sent or not;
 *  - the root sends "hello child" on the accepted connection;
 *  - a second connection within the root, IPv6 ([::1]), with 1000 bytes
 *    waiting at the accepting end; the connecting end's receive buffer
 *    size set by the program (SO_BUF_LOCK 2), the other sizes left to the
 *    kernel's tuning (SO_BUF_LOCK 0).
 * After the checkpoint every byte must arrive once and in order, both
 * ways, and each connection must close cleanly (end of file at the peer);
 * the sizes the kernel tuned are still its to tune.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "report.h"

#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif

#define BIG (3 << 20)
static unsigned char pattern(size_t i) { return (unsigned char)(i * 13 + i / 4093); }


/* read exactly n bytes, 10 s at most */
static size_t read_n(int fd, unsigned char *b, size_t n)
{
	size_t got = 0;
	while (got < n) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 10000) <= 0)
			break;
		ssize_t k = read(fd, b + got, n - got);
		if (k <= 0)
			break;
		got += k;
	}
	return got;
}

/* the peer closed: end of file within 10 s */
static int at_eof(int fd)
{
	struct pollfd p = {fd, POLLIN, 0};
	char c;
	return poll(&p, 1, 10000) == 1 && read(fd, &c, 1) == 0;
}

static int child(struct sockaddr_in srv)
{
	static unsigned char big[BIG];
	for (size_t i = 0; i < BIG; i++)
		big[i] = pattern(i);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&srv, sizeof(srv)))
		die("child connect");
	/* as much as the buffers take now; the rest after the checkpoint */
	fcntl(c, F_SETFL, O_NONBLOCK);
	size_t sent = 0;
	for (;;) {
		ssize_t k = write(c, big + sent, BIG - sent);
		if (k <= 0)
			break;
		sent += k;
	}
	fcntl(c, F_SETFL, 0);
	while (!got_usr2)
		pause();
	while (sent < BIG) {
		ssize_t k = write(c, big + sent, BIG - sent);
		if (k <= 0) {
			fail("child: write after %zu bytes: %s", sent, strerror(errno));
			break;
		}
		sent += k;
	}
	unsigned char buf[32];
	if (read_n(c, buf, 11) != 11 || memcmp(buf, "hello child", 11))
		fail("child: no \"hello child\" from the root");
	if (write(c, "bye", 3) != 3)
		fail("child: write bye: %s", strerror(errno));
	shutdown(c, SHUT_WR);
	if (!at_eof(c))
		fail("child: no end of file from the root");
	if (failbuf[0]) {
		printf("FAIL: %s\n", failbuf);
		return 1;
	}
	return 0;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();

	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in srv = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.1", &srv.sin_addr);
	socklen_t sl = sizeof(srv);
	if (l < 0 || bind(l, (struct sockaddr *)&srv, sizeof(srv)) || listen(l, 4) || getsockname(l, (struct sockaddr *)&srv, &sl))
		die("listen");
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		close(l);
		exit(child(srv));
	}
	int a = accept(l, NULL, NULL);
	if (a < 0)
		die("accept");
	if (write(a, "hello child", 11) != 11)
		die("write");

	int l6 = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	socklen_t s6l = sizeof(s6);
	if (l6 < 0 || bind(l6, (struct sockaddr *)&s6, sizeof(s6)) || listen(l6, 1) || getsockname(l6, (struct sockaddr *)&s6, &s6l))
		die("listen on [::1]");
	int c6 = socket(AF_INET6, SOCK_STREAM, 0), rcv = 65536;
	if (c6 < 0 || setsockopt(c6, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) || connect(c6, (struct sockaddr *)&s6, sizeof(s6)))
		die("connect to [::1]");
	int a6 = accept(l6, NULL, NULL);
	if (a6 < 0)
		die("accept on [::1]");
	static unsigned char small[1000];
	for (size_t i = 0; i < sizeof(small); i++)
		small[i] = pattern(i + 7);
	if (write(c6, small, sizeof(small)) != sizeof(small))
		die("write on [::1]");
	usleep(200000); /* the child has filled the buffers */

	printf("READY\n");
	while (!got_usr2)
		pause();
	kill(kid, SIGUSR2);

	struct {
		const char *what;
		int fd, want;
	} locks[] = {{"accepted", a, 0}, {"[::1] accepted", a6, 0}, {"[::1] connecting", c6, 2}};
	for (size_t i = 0; i < sizeof(locks) / sizeof(locks[0]); i++) {
		int v = -1;
		socklen_t vl = sizeof(v);
		if (getsockopt(locks[i].fd, SOL_SOCKET, SO_BUF_LOCK, &v, &vl) == 0 && v != locks[i].want)
			fail("%s: SO_BUF_LOCK %d, want %d", locks[i].what, v, locks[i].want);
	}

	static unsigned char buf[BIG];
	size_t n = read_n(a, buf, BIG);
	if (n != BIG)
		fail("root: %zu bytes from the child, want %d", n, BIG);
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pattern(i)) {
			fail("root: byte %zu from the child is %d, want %d", i, buf[i], pattern(i));
			break;
		}
	if (read_n(a, buf, 3) != 3 || memcmp(buf, "bye", 3))
		fail("root: no \"bye\" from the child");
	if (!at_eof(a))
		fail("root: no end of file from the child");
	close(a);

	if ((n = read_n(a6, buf, sizeof(small))) != sizeof(small) || memcmp(buf, small, sizeof(small)))
		fail("[::1]: %zu of the 1000 bytes waiting", n);
	if (write(a6, "back", 4) != 4 || read_n(c6, buf, 4) != 4 || memcmp(buf, "back", 4))
		fail("[::1]: nothing the other way");
	close(c6);
	if (!at_eof(a6))
		fail("[::1]: no end of file");

	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("child failed (status %#x)", st);
	return report();
}
