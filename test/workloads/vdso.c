// build: -pthread
/*
 * vdso.c - the vDSO across a checkpoint, also through a proxy (restart
 * --vdso-proxy, as under another kernel).
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * "vdso proxied" or "vdso in place", and PASS (exit 0) or "FAIL: ..."
 * (exit 1) as its last line.
 *
 * Set up: two threads call clock_gettime(CLOCK_MONOTONIC) in a loop (so a
 * checkpoint most likely stops them inside the vDSO), checking that it
 * never goes back; the main thread waits.
 * After the checkpoint: the threads still run and never saw time go back;
 * clock_gettime(CLOCK_REALTIME), gettimeofday and time agree within 2 s;
 * getcpu, clock_getres work; the [vdso] of /proc/self/maps is where
 * AT_SYSINFO_EHDR says ("in place") or elsewhere ("proxied": the
 * functions the program looked up run from the proxy).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/time.h>
#include <time.h>

#include "report.h"

static volatile long count[2];
static volatile int backwards;

static void *spin(void *arg)
{
	long i = (long)arg;
	struct timespec prev = {0}, now;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec < prev.tv_sec || (now.tv_sec == prev.tv_sec && now.tv_nsec < prev.tv_nsec))
			backwards = 1;
		prev = now;
		count[i]++;
	}
	return NULL;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	/* SIGUSR2 for the main thread, which pauses for it */
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &usr2, NULL);
	pthread_t t[2];
	for (long i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, spin, (void *)i))
			die("pthread_create");
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	while (count[0] == 0 || count[1] == 0)
		sched_yield();
	printf("READY\n");
	while (!got_usr2)
		pause();

	long before[2] = {count[0], count[1]};
	struct timespec pause_for = {0, 200 * 1000 * 1000};
	nanosleep(&pause_for, NULL);
	for (int i = 0; i < 2; i++)
		if (count[i] - before[i] < 100) /* millions when it runs */
			fail("thread %d made %ld calls in 200 ms", i, count[i] - before[i]);
	if (backwards)
		fail("CLOCK_MONOTONIC went back");
	struct timespec rt, res;
	struct timeval tv;
	clock_gettime(CLOCK_REALTIME, &rt);
	gettimeofday(&tv, NULL);
	time_t now = time(NULL);
	if (labs(rt.tv_sec - tv.tv_sec) > 2 || labs(rt.tv_sec - now) > 2)
		fail("clocks disagree: clock_gettime %ld, gettimeofday %ld, time %ld", (long)rt.tv_sec, (long)tv.tv_sec, (long)now);
	int cpu = sched_getcpu();
	if (cpu < 0 || cpu >= CPU_SETSIZE)
		fail("getcpu: %d", cpu);
	if (clock_getres(CLOCK_MONOTONIC, &res) || res.tv_sec != 0 || res.tv_nsec <= 0)
		fail("clock_getres: %ld.%09ld", (long)res.tv_sec, (long)res.tv_nsec);

	unsigned long ehdr = getauxval(AT_SYSINFO_EHDR), start = 0;
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	while (maps && fgets(line, sizeof(line), maps))
		if (strstr(line, "[vdso]"))
			sscanf(line, "%lx-", &start);
	if (maps)
		fclose(maps);
	if (!start)
		fail("no [vdso] in maps");
	printf("vdso %s\n", start == ehdr ? "in place" : "proxied");
	return report();
}
