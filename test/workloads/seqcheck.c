// build:
// seqcheck: the consumer end of a shell pipeline. It reads decimal lines
// and checks that each is one more than the last: bytes lost or repeated in
// the pipe across a checkpoint show as a gap. On SIGUSR2 it reports.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	char line[64];
	long prev = -1, n = 0;
	int ready = 0;
	while (!verify && fgets(line, sizeof line, stdin)) {
		long v = strtol(line, NULL, 10);
		if (v != prev + 1) { printf("FAIL: got %ld after %ld\n", v, prev); return 1; }
		prev = v;
		if (++n == 1000 && !ready) { printf("READY\n"); ready = 1; }
	}
	if (!verify) { printf("FAIL: input ended after %ld\n", prev); return 1; }
	printf("read %ld lines in order\nPASS\n", n);
	return 0;
}
