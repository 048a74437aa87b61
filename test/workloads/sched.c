// build: -pthread
// sched: threads with their own scheduling and I/O priorities, as nice,
// chrt and ionice give a batch job. The main thread runs SCHED_BATCH at
// nice 7 with reset-on-fork and I/O priority best-effort level 6; a second
// thread SCHED_IDLE with the idle I/O class; a third SCHED_FIFO priority 1
// (left out where real-time policies are refused). On SIGUSR2 the main
// thread checks every thread's from outside (sched_getattr, ioprio_get on
// its thread id) and reports PASS or FAIL.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct attr { // struct sched_attr
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

#define IOPRIO(class, level) ((class) << 13 | (level))

struct want {
	uint32_t policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	int ioprio;
	pid_t tid;
	int skip;
};

static struct want wants[] = {
	{SCHED_BATCH, SCHED_FLAG_RESET_ON_FORK, 7, 0, IOPRIO(2, 6), 0, 0},
	{SCHED_IDLE, 0, 0, 0, IOPRIO(3, 0), 0, 0},
	{SCHED_FIFO, 0, 0, 1, 0, 0, 0},
};
#define N (int)(sizeof wants / sizeof wants[0])

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

static int setup(struct want *w) {
	w->tid = syscall(SYS_gettid);
	struct attr a = {.size = sizeof a, .policy = w->policy, .flags = w->flags, .nice = w->nice, .priority = w->priority};
	if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) return -1;
	if (w->ioprio && syscall(SYS_ioprio_set, 1, 0, w->ioprio) != 0) return -1;
	return 0;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int ready;

static void *thread(void *arg) {
	struct want *w = arg;
	if (setup(w) != 0) w->skip = 1;
	pthread_mutex_lock(&mu);
	ready++;
	pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
	for (;;) pause();
	return NULL;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &usr2, NULL); // the threads leave it to main
	for (int i = 1; i < N; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, thread, &wants[i]) != 0) { printf("FAIL: pthread_create\n"); return 1; }
	}
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	pthread_mutex_lock(&mu);
	while (ready < N - 1) pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	if (setup(&wants[0]) != 0) { printf("FAIL: set up the main thread: %s\n", strerror(errno)); return 1; }
	if (wants[1].skip) { printf("FAIL: SCHED_IDLE refused\n"); return 1; }
	printf("READY\n");
	while (!verify) pause();

	for (int i = 0; i < N; i++) {
		struct want *w = &wants[i];
		if (w->skip) continue; // real-time refused here
		struct attr a = {0};
		if (syscall(SYS_sched_getattr, w->tid, &a, sizeof a, 0) != 0) { printf("FAIL: sched_getattr %d\n", w->tid); return 1; }
		if (a.policy != w->policy || (a.flags & SCHED_FLAG_RESET_ON_FORK) != w->flags || (w->policy != SCHED_FIFO && a.nice != w->nice) || a.priority != w->priority) {
			printf("FAIL: thread %d: policy %u flags %#llx nice %d priority %u, want %u %#llx %d %u\n", i, a.policy,
			       (unsigned long long)a.flags, a.nice, a.priority, w->policy, (unsigned long long)w->flags, w->nice, w->priority);
			return 1;
		}
		long io = syscall(SYS_ioprio_get, 1, w->tid);
		if (w->ioprio && io != w->ioprio) { printf("FAIL: thread %d: I/O priority %#lx, want %#x\n", i, io, w->ioprio); return 1; }
	}
	printf("PASS\n");
	return 0;
}
