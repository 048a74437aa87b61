// build: -I include
// self: a program that checkpoints itself (include/ckpt.h), after the seed's
// self.c. It counts iterations 0..7 and calls ckpt_self at iteration 2
// (image IMG) and, when IMG4 is given, again at iteration 4. In the running
// program each call returns a checkpoint id and it counts on; restarted from
// an image, the call returns 0 and it says "restarted at N" and counts on
// from N. It checks its own state (pid, counter, sum, ids) and says PASS or
// FAIL.
//
//	self [-w] [-f] IMG [IMG4]
//	-w  wait for SIGUSR2 before the verdict (so a test can keep it running)
//	-f  the checkpoint at 2 must fail (unwritable IMG); it carries on
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"

#define N 8

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	int wait = 0, fail = 0, a = 1;
	for (; a < argc && argv[a][0] == '-'; a++) {
		wait |= strcmp(argv[a], "-w") == 0;
		fail |= strcmp(argv[a], "-f") == 0;
	}
	if (a >= argc) {
		fprintf(stderr, "usage: self [-w] [-f] IMG [IMG4]\n");
		return 2;
	}
	const char *img[N] = {0};
	img[2] = argv[a];
	if (a + 1 < argc)
		img[4] = argv[a + 1];
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, NULL);

	pid_t pid = getpid();
	long ids[N] = {0};
	int restarts = 0, bad = 0;
	volatile long count = 0, sum = 0;
	printf("READY\n");
	for (int i = 0; i < N; i++) {
		printf("iteration %d\n", i);
		if (img[i]) {
			char msg[512];
			long id = ckpt_self_msg(img[i], 0, msg, sizeof msg);
			if (id > 0) {
				ids[i] = id;
				printf("checkpoint at %d: id %ld\n", i, id);
			} else if (id == 0) {
				restarts++;
				printf("restarted at %d\n", i);
				if (getpid() != pid) {
					printf("FAIL: pid %d after restart, was %d\n", getpid(), pid);
					bad = 1;
				}
			} else {
				int e = errno;
				printf("checkpoint at %d failed (errno %d): %s\n", i, e, msg);
				if (!fail || i != 2 || e == 0 || msg[0] == '\0') {
					printf("FAIL: unexpected checkpoint failure\n");
					bad = 1;
				}
			}
			if (fail && i == 2 && id >= 0) {
				printf("FAIL: the checkpoint to %s should have failed\n", img[i]);
				bad = 1;
			}
		}
		count++;
		sum += i;
		if (count != i + 1) {
			printf("FAIL: count %ld at iteration %d\n", count, i);
			bad = 1;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (ids[2] && ids[4] && ids[2] == ids[4]) {
		printf("FAIL: two checkpoints share id %ld\n", ids[2]);
		bad = 1;
	}
	if (count != N || sum != N * (N - 1) / 2) {
		printf("FAIL: count %ld sum %ld\n", count, sum);
		bad = 1;
	}
	printf("done: %d restart(s)\n", restarts);
	if (wait) {
		int sig;
		sigwait(&usr2, &sig);
	}
	printf(bad ? "FAIL\n" : "PASS\n");
	return bad;
}
