// build:
/*
 * sockets.c - unix sockets without names across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then the
 * child checks its ends, the root checks its own and reaps the child, and
 * the root prints PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up, none of the data read before the checkpoint:
 *  - a stream pair between root and child: 100000 patterned bytes from the
 *    root waiting at the child's end, 50 bytes the other way;
 *  - a datagram pair in the root: "one", a datagram of no bytes, 60000
 *    bytes, in that order, waiting at one end;
 *  - a seqpacket pair in the root: two packets waiting at one end, which
 *    has SO_RCVBUF 32768, SO_PASSCRED, SO_RCVTIMEO 1.5 s, SO_PEEK_OFF 2
 *    and O_NONBLOCK;
 *  - a stream pair whose other end was closed after writing "bye";
 *  - a stream pair shut down for writing on one side after "last";
 *  - an unconnected datagram socket.
 * After the checkpoint each end must hold exactly its data, in order and
 * with its boundaries, then end of file or nothing; options as set; and
 * every pair must still carry data both ways.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "report.h"


static void pair(int type, int sv[2])
{
	if (socketpair(AF_UNIX, type, 0, sv))
		die("socketpair");
}

static void put(int fd, const void *b, size_t n)
{
	if (send(fd, b, n, 0) != (ssize_t)n)
		die("send");
}

#define BIG 100000
static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + i / 251); }

/* read exactly n bytes from a stream socket, without blocking forever */
static int read_all(int fd, unsigned char *b, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t k = recv(fd, b + got, n - got, MSG_DONTWAIT);
		if (k <= 0)
			return (int)got;
		got += k;
	}
	return (int)got;
}

/* a stream or packet socket has nothing more to read (EAGAIN), or is at
 * end of file when eof is set */
static void check_empty(const char *name, int fd, int eof)
{
	char c;
	ssize_t k = recv(fd, &c, 1, MSG_DONTWAIT);
	if (eof && k != 0)
		fail("%s: want end of file, got %zd (%s)", name, k, k < 0 ? strerror(errno) : "data");
	if (!eof && !(k < 0 && errno == EAGAIN))
		fail("%s: want nothing waiting, got %zd (%s)", name, k, k < 0 ? strerror(errno) : "data");
}

/* the pair a-b still carries a message both ways */
static void check_alive(const char *name, int a, int b)
{
	char buf[16];
	if (send(a, "ping", 4, MSG_DONTWAIT) != 4 || recv(b, buf, sizeof(buf), MSG_DONTWAIT) != 4 || memcmp(buf, "ping", 4))
		fail("%s: no message from one end to the other", name);
	if (send(b, "pong", 4, MSG_DONTWAIT) != 4 || recv(a, buf, sizeof(buf), MSG_DONTWAIT) != 4 || memcmp(buf, "pong", 4))
		fail("%s: no message back", name);
}

static int child(int end)
{
	static unsigned char b[BIG];
	catch_usr2();
	put(end, "fifty bytes from the child, waiting in the root..", 50);
	while (!got_usr2)
		pause();
	int n = read_all(end, b, BIG);
	if (n != BIG)
		fail("child: %d bytes waiting from the root, want %d", n, BIG);
	for (int i = 0; i < n; i++)
		if (b[i] != pattern(i)) {
			fail("child: byte %d is %d, want %d", i, b[i], pattern(i));
			break;
		}
	check_empty("child's stream end", end, 0);
	put(end, "child ok", 8);
	if (failbuf[0]) {
		printf("FAIL: %s\n", failbuf);
		return 1;
	}
	return 0;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	static unsigned char big[BIG];
	for (size_t i = 0; i < BIG; i++)
		big[i] = pattern(i);

	int st[2], dg[2], sp[2], gone[2], half[2];
	pair(SOCK_STREAM, st);
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		close(st[0]);
		exit(child(st[1]));
	}
	close(st[1]);
	catch_usr2();
	put(st[0], big, BIG);

	pair(SOCK_DGRAM, dg);
	put(dg[1], "one", 3);
	put(dg[1], "", 0);
	static char mid[60000];
	memset(mid, 'm', sizeof(mid));
	put(dg[1], mid, sizeof(mid));

	pair(SOCK_SEQPACKET, sp);
	int v = 32768, one = 1, two = 2;
	struct timeval tv = {1, 500000};
	if (setsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &v, sizeof(v)) || setsockopt(sp[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
	    setsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) || fcntl(sp[0], F_SETFL, O_NONBLOCK))
		die("seqpacket options");
	put(sp[1], "packet one", 10);
	put(sp[1], "packet two!", 11);
	if (setsockopt(sp[0], SOL_SOCKET, SO_PEEK_OFF, &two, sizeof(two)))
		die("SO_PEEK_OFF");

	pair(SOCK_STREAM, gone);
	put(gone[1], "bye", 3);
	close(gone[1]);

	pair(SOCK_STREAM, half);
	put(half[1], "last", 4);
	if (shutdown(half[1], SHUT_WR))
		die("shutdown");

	int lone = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (lone < 0)
		die("socket");

	/* the child's 50 bytes are in before READY */
	for (int i = 0; i < 1000; i++) {
		int q = 0;
		if (recv(st[0], &q, 1, MSG_PEEK | MSG_DONTWAIT) == 1)
			break;
		usleep(1000);
	}
	printf("READY\n");
	while (!got_usr2)
		pause();

	char buf[65536];
	ssize_t k;
	/* stream with the child: its 50 bytes, then tell it to check */
	if ((k = read_all(st[0], (unsigned char *)buf, 50)) != 50 || memcmp(buf, "fifty bytes from the child", 26))
		fail("root: %zd bytes from the child, want its 50", k);
	check_empty("root's stream end", st[0], 0);
	kill(kid, SIGUSR2);

	/* datagrams, boundaries and the empty one kept */
	if ((k = recv(dg[0], buf, sizeof(buf), MSG_DONTWAIT)) != 3 || memcmp(buf, "one", 3))
		fail("datagram 1: %zd bytes", k);
	if ((k = recv(dg[0], buf, sizeof(buf), MSG_DONTWAIT)) != 0)
		fail("datagram 2: %zd bytes, want the empty one", k);
	if ((k = recv(dg[0], buf, sizeof(buf), MSG_DONTWAIT)) != (ssize_t)sizeof(mid) || memcmp(buf, mid, sizeof(mid)))
		fail("datagram 3: %zd bytes, want %zu", k, sizeof(mid));
	if ((k = recv(dg[0], buf, sizeof(buf), MSG_DONTWAIT)) != -1 || errno != EAGAIN)
		fail("datagram pair: %zd more bytes, want nothing", k);
	check_alive("datagram pair", dg[0], dg[1]);

	/* seqpacket: options, then packets (the peek offset skips two bytes) */
	socklen_t l = sizeof(v);
	int got = 0;
	if (getsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &got, &l) || got != 2 * 32768)
		fail("seqpacket SO_RCVBUF %d, want %d", got, 2 * 32768);
	if (getsockopt(sp[0], SOL_SOCKET, SO_PASSCRED, &got, &l) || got != 1)
		fail("seqpacket SO_PASSCRED %d", got);
	if (getsockopt(sp[0], SOL_SOCKET, SO_PEEK_OFF, &got, &l) || got != 2)
		fail("seqpacket SO_PEEK_OFF %d, want 2", got);
	struct timeval tg;
	l = sizeof(tg);
	if (getsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tg, &l) || tg.tv_sec != 1 || tg.tv_usec != 500000)
		fail("seqpacket SO_RCVTIMEO %ld.%06ld", (long)tg.tv_sec, (long)tg.tv_usec);
	if (!(fcntl(sp[0], F_GETFL) & O_NONBLOCK))
		fail("seqpacket end lost O_NONBLOCK");
	if ((k = recv(sp[0], buf, sizeof(buf), MSG_PEEK)) != 8 || memcmp(buf, "cket one", 8))
		fail("seqpacket peek at offset 2: %zd bytes", k);
	int zero = -1;
	setsockopt(sp[0], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
	if ((k = recv(sp[0], buf, sizeof(buf), 0)) != 10 || memcmp(buf, "packet one", 10))
		fail("seqpacket packet 1: %zd bytes", k);
	if ((k = recv(sp[0], buf, sizeof(buf), 0)) != 11 || memcmp(buf, "packet two!", 11))
		fail("seqpacket packet 2: %zd bytes", k);
	check_empty("seqpacket end", sp[0], 0);
	check_alive("seqpacket pair", sp[0], sp[1]);

	/* the pair whose other end is gone: its data, then end of file */
	if ((k = recv(gone[0], buf, sizeof(buf), MSG_DONTWAIT)) != 3 || memcmp(buf, "bye", 3))
		fail("closed pair: %zd bytes, want \"bye\"", k);
	check_empty("closed pair", gone[0], 1);
	if (send(gone[0], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
		fail("closed pair: a send did not fail with EPIPE");

	/* the half shut down pair: "last", end of file; the other way works */
	if ((k = recv(half[0], buf, sizeof(buf), MSG_DONTWAIT)) != 4 || memcmp(buf, "last", 4))
		fail("half-closed pair: %zd bytes, want \"last\"", k);
	check_empty("half-closed pair", half[0], 1);
	if (send(half[1], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
		fail("half-closed pair: the shut down end could still send");
	if (send(half[0], "back", 4, MSG_DONTWAIT) != 4 || recv(half[1], buf, sizeof(buf), MSG_DONTWAIT) != 4)
		fail("half-closed pair: no data the other way");

	/* the lone socket: a datagram socket, connected to nothing */
	int type = 0;
	l = sizeof(type);
	if (getsockopt(lone, SOL_SOCKET, SO_TYPE, &type, &l) || type != SOCK_DGRAM)
		fail("lone socket: type %d, want SOCK_DGRAM", type);
	struct sockaddr_storage ss;
	l = sizeof(ss);
	if (getpeername(lone, (struct sockaddr *)&ss, &l) != -1 || errno != ENOTCONN)
		fail("lone socket is connected");

	/* the child has read its data and answered */
	int status;
	if (waitpid(kid, &status, 0) != kid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("child failed (status %#x)", status);
	if ((k = recv(st[0], buf, sizeof(buf), MSG_DONTWAIT)) != 8 || memcmp(buf, "child ok", 8))
		fail("no answer from the child over the stream pair (%zd)", k);

	return report();
}
