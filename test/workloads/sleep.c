// build:
// sleep: sleeps 3 s in one clock_nanosleep (relative with a remainder
// pointer, "rel"; or to an absolute deadline, "abs") and reports how long it
// slept. A restarted sleep must neither fail with EINTR nor start over.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	int abs = argc > 1 && strcmp(argv[1], "abs") == 0;
	struct timespec t0, t1, req = {3, 0}, rem = {0, 0};
	clock_gettime(CLOCK_MONOTONIC, &t0);
	printf("READY\n");
	int r;
	if (abs) {
		req.tv_sec += t0.tv_sec;
		req.tv_nsec = t0.tv_nsec;
		r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &req, NULL);
	} else {
		r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double el = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("slept %.3f s\n", el);
	if (r != 0) { printf("FAIL: clock_nanosleep returned %s\n", strerror(r)); return 1; }
	if (el < 2.99) { printf("FAIL: woke after %.3f s, before 3 s\n", el); return 1; }
	printf("PASS\n");
	return 0;
}
