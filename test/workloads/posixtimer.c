// build: -pthread
/*
 * posixtimer.c - POSIX timers (timer_create) across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; on SIGUSR2
 * it prints PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Timers set up (IDs as the kernel gave them; one made and deleted leaves
 * a gap the restored IDs must keep):
 *  - tick: CLOCK_MONOTONIC, SIGRTMIN+2 with value 0xabcdef, every 20 ms;
 *    its handler counts ticks and checks si_value and si_timerid;
 *  - worker: CLOCK_REALTIME, SIGRTMIN+3 to the worker thread alone
 *    (SIGEV_THREAD_ID), every 10 ms; the handler counts ticks taken on
 *    any other thread as errors;
 *  - far: CLOCK_BOOTTIME, one-shot in 600 s, SIGEV_NONE;
 *  - cpu: the process's CPU clock, one-shot in 1000 s of CPU, SIGEV_NONE;
 *  - idle: made, never armed (default sigevent: SIGALRM, value = its ID);
 *  - fired: CLOCK_MONOTONIC, SIGRTMIN+4 (blocked) value 77, fired once
 *    during set-up, so its signal is pending at checkpoint.
 * On SIGUSR2 it checks that the deleted ID is still free and each other ID
 * is the timer it was (interval, armed or not, time left within bounds),
 * that tick and worker keep firing (200 ms), and takes the pending signal
 * of "fired" with its si_code, value and timer ID.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "report.h"

static volatile int tick_count, tick_bad, worker_count, worker_wrong;
static volatile pid_t worker_tid;
static timer_t tick, worker, far, cpu, idle, fired, deleted;


static int kid(timer_t t) { return (int)(intptr_t)t; }

static void on_tick(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (si->si_code != SI_TIMER || si->si_value.sival_ptr != (void *)0xabcdef || si->si_timerid != kid(tick))
		tick_bad++;
	tick_count++;
}

static void on_worker(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si, (void)uc;
	if (syscall(SYS_gettid) != worker_tid)
		worker_wrong++;
	worker_count++;
}

static void *worker_main(void *arg)
{
	(void)arg;
	worker_tid = syscall(SYS_gettid);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGRTMIN + 3);
	pthread_sigmask(SIG_UNBLOCK, &m, NULL);
	for (;;)
		pause();
	return NULL;
}

static void make(timer_t *t, clockid_t clock, int notify, int sig, void *value, pid_t tid)
{
	struct sigevent ev;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = notify;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_ptr = value;
	ev._sigev_un._tid = tid;
	if (timer_create(clock, &ev, t))
		die("timer_create");
}

static void arm(timer_t t, double value, double interval)
{
	struct itimerspec its = {
		.it_value = {(time_t)value, (long)((value - (time_t)value) * 1e9)},
		.it_interval = {(time_t)interval, (long)((interval - (time_t)interval) * 1e9)},
	};
	if (timer_settime(t, 0, &its, NULL))
		die("timer_settime");
}

static double secs(struct timespec ts) { return ts.tv_sec + ts.tv_nsec / 1e9; }

/* check that timer t exists with this interval, and time left in [lo, hi] */
static void check(const char *name, timer_t t, double interval, double lo, double hi)
{
	struct itimerspec its;
	if (timer_gettime(t, &its)) {
		fail("%s (ID %d): timer_gettime: %s", name, kid(t), strerror(errno));
		return;
	}
	double iv = secs(its.it_interval), v = secs(its.it_value);
	if (iv < interval - 1e-6 || iv > interval + 1e-6)
		fail("%s: interval %.6f s, want %.6f", name, iv, interval);
	if (v < lo || v > hi)
		fail("%s: %.3f s left, want %.3f..%.3f", name, v, lo, hi);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return secs(ts);
}

static void sleep_for(double s)
{
	double end = now() + s;
	while (now() < end) {
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL); /* EINTR from the ticks is fine */
	}
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = NULL;
	sa.sa_sigaction = on_tick;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGRTMIN + 2, &sa, NULL))
		die("sigaction tick");
	sa.sa_sigaction = on_worker;
	if (sigaction(SIGRTMIN + 3, &sa, NULL))
		die("sigaction worker");

	/* Only the worker takes SIGRTMIN+3; nobody takes SIGRTMIN+4 yet. */
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGRTMIN + 3);
	sigaddset(&m, SIGRTMIN + 4);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	pthread_t th;
	if (pthread_create(&th, NULL, worker_main, NULL))
		die("pthread_create");
	while (!worker_tid)
		sleep_for(0.001);

	make(&tick, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 2, (void *)0xabcdef, 0);
	make(&deleted, CLOCK_MONOTONIC, SIGEV_NONE, 0, NULL, 0);
	make(&worker, CLOCK_REALTIME, SIGEV_THREAD_ID, SIGRTMIN + 3, NULL, worker_tid);
	make(&far, CLOCK_BOOTTIME, SIGEV_NONE, 0, NULL, 0);
	make(&cpu, CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 0, NULL, 0);
	if (timer_create(CLOCK_MONOTONIC, NULL, &idle))
		die("timer_create idle");
	make(&fired, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 4, (void *)77, 0);
	if (timer_delete(deleted))
		die("timer_delete");
	arm(tick, 0.02, 0.02);
	arm(worker, 0.01, 0.01);
	arm(far, 600, 0);
	arm(cpu, 1000, 0);
	arm(fired, 0.001, 0);
	sleep_for(0.05);
	printf("READY\n");

	while (!got_usr2)
		pause();

	struct itimerspec its;
	if (timer_gettime(deleted, &its) == 0 || errno != EINVAL)
		fail("deleted ID %d exists again", kid(deleted));
	check("tick", tick, 0.02, 0, 0.02);
	check("worker", worker, 0.01, 0, 0.01);
	/* far counts boot time: less than 600 s left, by the time the process
	 * ran since it was armed. */
	check("far", far, 0, 1, 600);
	check("cpu", cpu, 0, 999, 1000);
	check("idle", idle, 0, 0, 0);
	check("fired", fired, 0, 0, 0);

	int t1 = tick_count, w1 = worker_count;
	sleep_for(0.2);
	int dt = tick_count - t1, dw = worker_count - w1;
	if (dt < 3)
		fail("tick fired %d times in 200 ms (every 20 ms)", dt);
	if (dw < 6)
		fail("worker fired %d times in 200 ms (every 10 ms)", dw);
	if (tick_bad)
		fail("%d tick signals with the wrong code, value or timer ID", tick_bad);
	if (worker_wrong)
		fail("%d worker signals on the wrong thread", worker_wrong);

	sigset_t w;
	sigemptyset(&w);
	sigaddset(&w, SIGRTMIN + 4);
	siginfo_t si;
	struct timespec zero = {0, 0};
	if (sigtimedwait(&w, &si, &zero) != SIGRTMIN + 4)
		fail("the pending signal of timer \"fired\" is gone: %s", strerror(errno));
	else if (si.si_code != SI_TIMER || si.si_value.sival_ptr != (void *)77 || si.si_timerid != kid(fired))
		fail("pending timer signal: code %d value %p timer %d, want %d %p %d", si.si_code,
		     si.si_value.sival_ptr, si.si_timerid, SI_TIMER, (void *)77, kid(fired));
	else if (sigtimedwait(&w, &si, &zero) == SIGRTMIN + 4)
		fail("timer \"fired\" signalled twice");

	return report();
}
