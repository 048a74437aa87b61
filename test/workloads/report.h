/*
 * report.h - how a workload reports: fail() collects every difference it
 * finds (the first first), die() ends a set-up that could not be done,
 * report() prints the last line the harness reads, PASS or "FAIL: ...",
 * and gives the exit status.
 */
#ifndef CKPT_WORKLOAD_REPORT_H
#define CKPT_WORKLOAD_REPORT_H

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char failbuf[8192];

/* die_cleanup, if set, runs before die() exits (to remove files). */
static void (*die_cleanup)(void);

__attribute__((unused, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
	va_list ap;
	size_t l = strlen(failbuf);
	if (l >= sizeof(failbuf) - 4)
		return;
	if (l)
		strcat(failbuf, "; ");
	l = strlen(failbuf);
	va_start(ap, fmt);
	vsnprintf(failbuf + l, sizeof(failbuf) - l, fmt, ap);
	va_end(ap);
}

__attribute__((unused, noreturn)) static void die(const char *what)
{
	printf("FAIL: setup: %s: %s\n", what, strerror(errno));
	if (die_cleanup)
		die_cleanup();
	exit(1);
}

__attribute__((unused)) static int report(void)
{
	if (failbuf[0]) {
		printf("FAIL: %s\n", failbuf);
		return 1;
	}
	printf("PASS\n");
	return 0;
}

/* got_usr2 is set by SIGUSR2, the harness's "the restart is done: check
 * now". */
static volatile sig_atomic_t got_usr2;
__attribute__((unused)) static void on_usr2(int sig)
{
	(void)sig;
	got_usr2 = 1;
}

/* catch_usr2 makes on_usr2 SIGUSR2's handler: no flags (a pause() it
 * interrupts returns), nothing blocked while it runs. */
__attribute__((unused)) static void catch_usr2(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr2;
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction SIGUSR2");
}

/* pass_failures ends a child that checked something for its parent: what
 * fail() collected goes to fd (a pipe to the parent); exit 1 if it could
 * not be written. */
__attribute__((unused, noreturn)) static void pass_failures(int fd)
{
	size_t n = strlen(failbuf);
	_exit(n && write(fd, failbuf, n) != (ssize_t)n);
}

/* take_failures reads what a child passed with pass_failures on fd, until
 * the child closes it, and adds it to the parent's failures. */
__attribute__((unused)) static void take_failures(int fd)
{
	char buf[sizeof(failbuf)];
	ssize_t n, got = 0;
	while ((n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
		got += n;
	buf[got] = 0;
	if (got)
		fail("%s", buf);
}

#endif
