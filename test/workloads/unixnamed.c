// build:
/*
 * unixnamed.c - unix sockets bound to a name across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line. It runs in a
 * directory of its own and removes its socket files before it exits.
 *
 * Set up:
 *  - a stream listener bound to ./srv.sock (absolute path), backlog 4,
 *    its file mode 0640;
 *  - a datagram socket bound to ./dg.sock, with two datagrams ("d1", "d2")
 *    a since closed client sent to it, unread;
 *  - a seqpacket listener on an abstract name;
 *  - a datagram socket bound to another abstract name;
 *  - a connection accepted on srv.sock, "to server" waiting at the
 *    accepted end and "to client" at the connecting one.
 * After the checkpoint each must have its name; the socket files their
 * mode; the listeners must accept a connection and carry data; the
 * datagram socket must hold d1 and d2, in order, and take new ones; the
 * connection must hold its data and carry more.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "report.h"


static char srv_path[200], dg_path[200];

static void cleanup(void)
{
	unlink(srv_path);
	unlink(dg_path);
}

/* an address: a path, or "@name" for an abstract one */
static socklen_t addr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (name[0] == '@') {
		memcpy(a->sun_path + 1, name + 1, strlen(name) - 1);
		return offsetof(struct sockaddr_un, sun_path) + strlen(name);
	}
	strcpy(a->sun_path, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1;
}

static int bound(int type, const char *name)
{
	struct sockaddr_un a;
	socklen_t l = addr(&a, name);
	int fd = socket(AF_UNIX, type, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, l))
		die(name);
	return fd;
}

static void same_name(const char *what, int fd, const char *name)
{
	struct sockaddr_un want, got;
	socklen_t wl = addr(&want, name), gl = sizeof(got);
	memset(&got, 0, sizeof(got));
	if (getsockname(fd, (struct sockaddr *)&got, &gl) || gl != wl || memcmp(&got, &want, wl))
		fail("%s: name changed", what);
}

/* connect to a listener, accept, carry a message both ways */
static void check_listener(const char *what, int lfd, int type, const char *name)
{
	struct sockaddr_un a;
	socklen_t l = addr(&a, name);
	int c = socket(AF_UNIX, type, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, l)) {
		fail("%s: connect: %s", what, strerror(errno));
		return;
	}
	int s = accept(lfd, NULL, NULL);
	char buf[8];
	if (s < 0)
		fail("%s: accept: %s", what, strerror(errno));
	else if (write(c, "hi", 2) != 2 || read(s, buf, sizeof(buf)) != 2 || write(s, "yo", 2) != 2 || read(c, buf, sizeof(buf)) != 2)
		fail("%s: no data over the accepted connection", what);
	close(c);
	if (s >= 0)
		close(s);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	die_cleanup = cleanup;
	catch_usr2();
	char cwd[128];
	if (!getcwd(cwd, sizeof(cwd)))
		die("getcwd");
	snprintf(srv_path, sizeof(srv_path), "%s/srv.sock", cwd);
	snprintf(dg_path, sizeof(dg_path), "%s/dg.sock", cwd);
	char abs_l[64], abs_d[64];
	snprintf(abs_l, sizeof(abs_l), "@ckpt-e2e-listen-%d", getpid());
	snprintf(abs_d, sizeof(abs_d), "@ckpt-e2e-dgram-%d", getpid());

	int srv = bound(SOCK_STREAM, srv_path);
	if (listen(srv, 4) || chmod(srv_path, 0640))
		die("listen on srv.sock");
	int dg = bound(SOCK_DGRAM, dg_path);
	struct sockaddr_un a;
	socklen_t al = addr(&a, dg_path);
	int cl = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (sendto(cl, "d1", 2, 0, (struct sockaddr *)&a, al) != 2 || sendto(cl, "d2", 2, 0, (struct sockaddr *)&a, al) != 2)
		die("send to dg.sock");
	close(cl);
	int ls = bound(SOCK_SEQPACKET, abs_l);
	if (listen(ls, 2))
		die("listen on an abstract name");
	int ad = bound(SOCK_DGRAM, abs_d);
	int cc = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa_srv;
	socklen_t sal = addr(&sa_srv, srv_path);
	if (cc < 0 || connect(cc, (struct sockaddr *)&sa_srv, sal))
		die("connect to srv.sock");
	int acc = accept(srv, NULL, NULL);
	if (acc < 0 || write(cc, "to server", 9) != 9 || write(acc, "to client", 9) != 9)
		die("accept on srv.sock");

	printf("READY\n");
	while (!got_usr2)
		pause();

	same_name("stream listener", srv, srv_path);
	struct stat st;
	if (lstat(srv_path, &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0640)
		fail("srv.sock: mode %o, want a socket with 0640", st.st_mode);
	check_listener("stream listener", srv, SOCK_STREAM, srv_path);

	same_name("datagram socket", dg, dg_path);
	char buf[16];
	ssize_t k;
	if ((k = recv(dg, buf, sizeof(buf), MSG_DONTWAIT)) != 2 || memcmp(buf, "d1", 2))
		fail("dg.sock: first datagram %zd bytes, want d1", k);
	if ((k = recv(dg, buf, sizeof(buf), MSG_DONTWAIT)) != 2 || memcmp(buf, "d2", 2))
		fail("dg.sock: second datagram %zd bytes, want d2", k);
	if (recv(dg, buf, sizeof(buf), MSG_DONTWAIT) != -1 || errno != EAGAIN)
		fail("dg.sock: more datagrams than d1 and d2");
	cl = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (sendto(cl, "d3", 2, 0, (struct sockaddr *)&a, al) != 2 || recv(dg, buf, sizeof(buf), MSG_DONTWAIT) != 2)
		fail("dg.sock takes no new datagram");

	char b2[16];
	if (recv(acc, b2, sizeof(b2), MSG_DONTWAIT) != 9 || memcmp(b2, "to server", 9))
		fail("accepted connection: \"to server\" is not waiting");
	if (recv(cc, b2, sizeof(b2), MSG_DONTWAIT) != 9 || memcmp(b2, "to client", 9))
		fail("connecting end: \"to client\" is not waiting");
	if (write(cc, "more", 4) != 4 || recv(acc, b2, sizeof(b2), MSG_DONTWAIT) != 4)
		fail("the accepted connection carries nothing more");

	same_name("abstract listener", ls, abs_l);
	check_listener("abstract listener", ls, SOCK_SEQPACKET, abs_l);
	same_name("abstract datagram socket", ad, abs_d);

	cleanup();
	return report();
}
