// build:
// evloop: the descriptors event loops are built from. An eventfd holding a
// count, a semaphore eventfd, a timerfd armed with an interval and unread
// expirations, a signalfd with a queued signal, and an epoll instance
// watching all of them (one edge-triggered). On SIGUSR2 it checks each.
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

#define FAIL(...) do { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } while (0)

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);

	int efd = eventfd(5, EFD_NONBLOCK);
	int sem = eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = {.it_interval = {0, 50000000}, .it_value = {0, 50000000}};
	timerfd_settime(tfd, 0, &its, NULL);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigprocmask(SIG_BLOCK, &m, NULL);
	int sfd = signalfd(-1, &m, SFD_NONBLOCK);
	union sigval v = {.sival_int = 77};
	sigqueue(getpid(), SIGUSR1, v);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1111};
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = 0x2222;
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	ev.events = EPOLLIN;
	ev.data.u64 = 0x3333;
	epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
	usleep(120000); // let the timer expire twice, unread

	printf("READY\n");
	while (!verify) usleep(10000);

	// epoll: all three ready, with their data.
	struct epoll_event out[8];
	int n = epoll_wait(ep, out, 8, 1000);
	int seen = 0;
	for (int i = 0; i < n; i++) {
		if (out[i].data.u64 == 0x1111) seen |= 1;
		else if (out[i].data.u64 == 0x2222) seen |= 2;
		else if (out[i].data.u64 == 0x3333) seen |= 4;
		else FAIL("epoll returned unknown data %#lx", (unsigned long)out[i].data.u64);
	}
	if (seen != 7) FAIL("epoll reported %d ready descriptors (mask %#x), want the eventfd, timerfd and signalfd", n, seen);
	// EPOLL_CTL_MOD must find the item under the same fd.
	ev.events = EPOLLIN;
	ev.data.u64 = 0x1112;
	if (epoll_ctl(ep, EPOLL_CTL_MOD, efd, &ev) != 0) FAIL("epoll_ctl MOD on the eventfd: %s", strerror(errno));

	uint64_t c;
	if (read(efd, &c, 8) != 8 || c != 5) FAIL("eventfd count %lu, want 5", (unsigned long)c);
	if (read(efd, &c, 8) != -1 || errno != EAGAIN) FAIL("eventfd is no longer non-blocking");
	for (int i = 0; i < 3; i++)
		if (read(sem, &c, 8) != 8 || c != 1) FAIL("semaphore eventfd read %d gave %lu", i, (unsigned long)c);

	if (read(tfd, &c, 8) != 8 || c < 2) FAIL("timerfd had %lu expirations, want at least 2", (unsigned long)c);
	struct itimerspec cur;
	timerfd_gettime(tfd, &cur);
	if (cur.it_interval.tv_sec != 0 || cur.it_interval.tv_nsec != 50000000) FAIL("timerfd interval %ld.%09ld", cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
	usleep(60000);
	if (read(tfd, &c, 8) != 8 || c < 1) FAIL("timerfd stopped firing");

	struct signalfd_siginfo si;
	if (read(sfd, &si, sizeof si) != sizeof si) FAIL("signalfd has no signal: %s", strerror(errno));
	if (si.ssi_signo != SIGUSR1 || si.ssi_int != 77) FAIL("signalfd gave signal %u value %d, want SIGUSR1 77", si.ssi_signo, si.ssi_int);

	int fl = fcntl(sem, F_GETFD);
	if (!(fl & FD_CLOEXEC)) FAIL("semaphore eventfd lost close-on-exec");
	printf("PASS\n");
	return 0;
}
