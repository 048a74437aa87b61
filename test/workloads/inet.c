// build:
/*
 * inet.c - IPv4 and IPv6 sockets without connections across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up (ports chosen by the kernel):
 *  - a TCP listener on 127.0.0.1 with SO_REUSEADDR, SO_KEEPALIVE and
 *    backlog 7, O_NONBLOCK, watched by an epoll instance;
 *  - a TCP listener on [::] with IPV6_V6ONLY (binding a specific IPv6
 *    address would set it by itself) and traffic class 0x20;
 *  - a TCP socket bound to 127.0.0.1 with TCP_NODELAY, SO_LINGER 5 s,
 *    SO_RCVLOWAT 4, TCP_KEEPIDLE 77, TCP_USER_TIMEOUT 1234, not listening;
 *  - a UDP socket bound to 127.0.0.1 with IP_TOS 0x10, connected to a
 *    second UDP socket
 *    (bound, SO_BROADCAST), which holds a datagram nobody read (not kept);
 *  - a UDP socket that is not bound.
 * After the checkpoint each must have its address, peer, options and
 * backlog; the listeners must accept a connection and carry data; the UDP
 * pair must carry datagrams both ways.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "report.h"


static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, name, &v, &l))
		return -1;
	return v;
}

static void setopt(int fd, int level, int name, int v)
{
	if (setsockopt(fd, level, name, &v, sizeof(v)))
		die("setsockopt");
}

static struct sockaddr_in v4(const char *ip)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	inet_pton(AF_INET, ip, &a.sin_addr);
	return a;
}

static struct sockaddr_storage name_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &l))
		die("getsockname");
	return ss;
}

static void same_name(const char *what, int fd, struct sockaddr_storage want)
{
	struct sockaddr_storage got;
	socklen_t l = sizeof(got);
	memset(&got, 0, sizeof(got));
	if (getsockname(fd, (struct sockaddr *)&got, &l) || memcmp(&got, &want, sizeof(got)))
		fail("%s: local address changed", what);
}

/* connect to a listener at addr, accept, and pass data both ways */
static void check_listener(const char *what, int lfd, struct sockaddr_storage addr, socklen_t alen)
{
	int c = socket(addr.ss_family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&addr, alen)) {
		fail("%s: connect: %s", what, strerror(errno));
		return;
	}
	int fl = fcntl(lfd, F_GETFL);
	fcntl(lfd, F_SETFL, fl & ~O_NONBLOCK);
	int a = accept(lfd, NULL, NULL);
	fcntl(lfd, F_SETFL, fl);
	char buf[8];
	if (a < 0)
		fail("%s: accept: %s", what, strerror(errno));
	else if (write(c, "hi", 2) != 2 || read(a, buf, sizeof(buf)) != 2 || write(a, "yo", 2) != 2 || read(c, buf, sizeof(buf)) != 2)
		fail("%s: no data over the accepted connection", what);
	close(c);
	if (a >= 0)
		close(a);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();

	struct sockaddr_in lo = v4("127.0.0.1");
	int l4 = socket(AF_INET, SOCK_STREAM, 0);
	setopt(l4, SOL_SOCKET, SO_REUSEADDR, 1);
	setopt(l4, SOL_SOCKET, SO_KEEPALIVE, 1);
	if (bind(l4, (struct sockaddr *)&lo, sizeof(lo)) || listen(l4, 7) || fcntl(l4, F_SETFL, O_NONBLOCK))
		die("listen on 127.0.0.1");
	struct sockaddr_storage l4name = name_of(l4);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x4444};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l4, &ev))
		die("epoll on the listener");

	int l6 = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 any6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
	setopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	setopt(l6, IPPROTO_IPV6, IPV6_TCLASS, 0x20);
	if (bind(l6, (struct sockaddr *)&any6, sizeof(any6)) || listen(l6, 3))
		die("listen on [::]");
	struct sockaddr_storage l6name = name_of(l6);

	int tb = socket(AF_INET, SOCK_STREAM, 0);
	setopt(tb, IPPROTO_TCP, TCP_NODELAY, 1);
	struct linger lg = {1, 5};
	if (setsockopt(tb, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)))
		die("SO_LINGER");
	setopt(tb, SOL_SOCKET, SO_RCVLOWAT, 4);
	setopt(tb, IPPROTO_TCP, TCP_KEEPIDLE, 77);
	setopt(tb, IPPROTO_TCP, TCP_USER_TIMEOUT, 1234);
	if (bind(tb, (struct sockaddr *)&lo, sizeof(lo)))
		die("bind TCP");
	struct sockaddr_storage tbname = name_of(tb);

	int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
	setopt(u2, SOL_SOCKET, SO_BROADCAST, 1);
	setopt(u1, IPPROTO_IP, IP_TOS, 0x10);
	if (bind(u1, (struct sockaddr *)&lo, sizeof(lo)) || bind(u2, (struct sockaddr *)&lo, sizeof(lo)))
		die("bind UDP");
	struct sockaddr_storage u1name = name_of(u1), u2name = name_of(u2);
	if (connect(u1, (struct sockaddr *)&u2name, sizeof(struct sockaddr_in)))
		die("connect UDP");
	if (send(u1, "lost", 4, 0) != 4)
		die("send UDP");

	int un = socket(AF_INET, SOCK_DGRAM, 0);
	if (un < 0)
		die("socket");

	printf("READY\n");
	while (!got_usr2)
		pause();

	same_name("IPv4 listener", l4, l4name);
	if (opt(l4, SOL_SOCKET, SO_ACCEPTCONN) != 1)
		fail("IPv4 listener does not listen");
	if (opt(l4, SOL_SOCKET, SO_REUSEADDR) != 1 || opt(l4, SOL_SOCKET, SO_KEEPALIVE) != 1)
		fail("IPv4 listener lost SO_REUSEADDR or SO_KEEPALIVE");
	if (!(fcntl(l4, F_GETFL) & O_NONBLOCK))
		fail("IPv4 listener lost O_NONBLOCK");
	struct tcp_info ti;
	socklen_t til = sizeof(ti);
	if (getsockopt(l4, IPPROTO_TCP, TCP_INFO, &ti, &til) || ti.tcpi_sacked != 7)
		fail("IPv4 listener backlog %u, want 7", ti.tcpi_sacked);
	/* epoll reports a connection waiting on the listener */
	int pc = socket(AF_INET, SOCK_STREAM, 0);
	struct epoll_event got;
	if (pc < 0 || connect(pc, (struct sockaddr *)&l4name, sizeof(struct sockaddr_in)))
		fail("IPv4 listener: connect: %s", strerror(errno));
	else if (epoll_wait(ep, &got, 1, 5000) != 1 || got.data.u64 != 0x4444)
		fail("IPv4 listener: epoll does not report the connection waiting");
	else {
		int pa = accept(l4, NULL, NULL);
		if (pa < 0)
			fail("IPv4 listener: accept after epoll: %s", strerror(errno));
		else
			close(pa);
	}
	if (pc >= 0)
		close(pc);
	check_listener("IPv4 listener", l4, l4name, sizeof(struct sockaddr_in));

	same_name("IPv6 listener", l6, l6name);
	if (opt(l6, IPPROTO_IPV6, IPV6_V6ONLY) != 1)
		fail("IPv6 listener lost IPV6_V6ONLY");
	struct sockaddr_storage to6 = l6name;
	((struct sockaddr_in6 *)&to6)->sin6_addr = in6addr_loopback;
	check_listener("IPv6 listener", l6, to6, sizeof(struct sockaddr_in6));

	same_name("bound TCP socket", tb, tbname);
	if (opt(tb, IPPROTO_TCP, TCP_NODELAY) != 1)
		fail("bound TCP socket lost TCP_NODELAY");
	if (opt(tb, SOL_SOCKET, SO_ACCEPTCONN) != 0)
		fail("bound TCP socket listens");
	socklen_t lgl = sizeof(lg);
	memset(&lg, 0, sizeof(lg));
	if (getsockopt(tb, SOL_SOCKET, SO_LINGER, &lg, &lgl) || lg.l_onoff != 1 || lg.l_linger != 5)
		fail("bound TCP socket: SO_LINGER %d/%d, want on, 5 s", lg.l_onoff, lg.l_linger);
	if (opt(tb, SOL_SOCKET, SO_RCVLOWAT) != 4 || opt(tb, IPPROTO_TCP, TCP_KEEPIDLE) != 77 || opt(tb, IPPROTO_TCP, TCP_USER_TIMEOUT) != 1234)
		fail("bound TCP socket: SO_RCVLOWAT %d, TCP_KEEPIDLE %d, TCP_USER_TIMEOUT %d", opt(tb, SOL_SOCKET, SO_RCVLOWAT),
		     opt(tb, IPPROTO_TCP, TCP_KEEPIDLE), opt(tb, IPPROTO_TCP, TCP_USER_TIMEOUT));
	if (opt(l6, IPPROTO_IPV6, IPV6_TCLASS) != 0x20)
		fail("IPv6 listener: traffic class %#x, want 0x20", opt(l6, IPPROTO_IPV6, IPV6_TCLASS));
	if (opt(u1, IPPROTO_IP, IP_TOS) != 0x10)
		fail("UDP socket: IP_TOS %#x, want 0x10", opt(u1, IPPROTO_IP, IP_TOS));

	same_name("UDP socket", u1, u1name);
	same_name("UDP peer", u2, u2name);
	struct sockaddr_storage peer;
	socklen_t pl = sizeof(peer);
	memset(&peer, 0, sizeof(peer));
	if (getpeername(u1, (struct sockaddr *)&peer, &pl) || memcmp(&peer, &u2name, sizeof(peer)))
		fail("UDP socket: peer changed");
	if (opt(u2, SOL_SOCKET, SO_BROADCAST) != 1)
		fail("UDP peer lost SO_BROADCAST");
	char buf[16];
	/* the datagram waiting at the checkpoint is gone (not kept) */
	if (recv(u2, buf, sizeof(buf), MSG_DONTWAIT) >= 0 && memcmp(buf, "lost", 4) != 0)
		fail("UDP peer: an unexpected datagram");
	if (send(u1, "ping", 4, 0) != 4 || recv(u2, buf, sizeof(buf), 0) != 4 || memcmp(buf, "ping", 4))
		fail("UDP: no datagram from the connected socket");
	if (sendto(u2, "pong", 4, 0, (struct sockaddr *)&u1name, sizeof(struct sockaddr_in)) != 4 || recv(u1, buf, sizeof(buf), 0) != 4)
		fail("UDP: no datagram to the connected socket");

	struct sockaddr_storage unname = name_of(un);
	if (((struct sockaddr_in *)&unname)->sin_port != 0)
		fail("unbound UDP socket is bound");

	return report();
}
