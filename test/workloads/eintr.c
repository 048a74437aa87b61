// build:
/*
 * eintr.c - a blocking call interrupted by a signal whose handler lacks
 * SA_RESTART fails with EINTR, also when the signal comes right after the
 * restart.
 *
 * The root and its child each block in read() on an empty pipe of their
 * own, with a SIGUSR2 handler without SA_RESTART. Protocol: READY, then
 * SIGUSR2 to the root; its read must fail with EINTR, at once it sends
 * SIGUSR2 to the child, whose read must fail the same way; the root prints
 * PASS (exit 0) or "FAIL: ..." (exit 1). The child is signalled within
 * microseconds of the root's release: a restart that released a thread in
 * a blocking call with the call's restart already set up would let the
 * handler run first and the read block again, for ever.
 */
#define _GNU_SOURCE
#include <sys/wait.h>

#include "report.h"

/* block reads the empty pipe p until a signal interrupts it; 0 if that
 * was SIGUSR2 with EINTR, else a description in fail(). */
static int block(int p, const char *who)
{
	char c;
	ssize_t n = read(p, &c, 1);
	if (n != -1 || errno != EINTR) {
		fail("%s: read returned %zd (%s), want EINTR", who, n, n < 0 ? strerror(errno) : "data");
		return 1;
	}
	if (!got_usr2) {
		fail("%s: read interrupted without SIGUSR2", who);
		return 1;
	}
	return 0;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	int rp[2], cp[2];
	if (pipe(rp) || pipe(cp))
		die("pipe");
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		int bad = block(cp[0], "child");
		if (bad)
			printf("%s\n", failbuf); /* the root reports the status */
		_exit(bad);
	}
	usleep(20000); /* the child is in its read */
	printf("READY\n");
	if (block(rp[0], "root") == 0)
		kill(kid, SIGUSR2);
	else
		kill(kid, SIGKILL);
	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("child failed (status %#x)", st);
	return report();
}
