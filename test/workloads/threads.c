// build: -pthread
// threads: six threads, each in a different kind of wait or work (busy,
// nanosleep, condition variable, sigwaitinfo, poll on a pipe, read on a
// pipe), with its
// own TLS value, name, signal mask, CPU affinity (the odd threads are bound
// to the last CPU) and (for one) a pending thread-directed signal. The
// process catches SIGTRAP, which ckpt's injected calls stop at (its handler
// must survive them); built with -DIGNORE_TRAP it ignores SIGTRAP instead,
// which makes ckpt inject without stopping at int3s. On SIGUSR2 every
// thread checks its own state and the main thread reports PASS or FAIL.
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NT 6
static __thread uint64_t tls_value;
static pid_t tids[NT];
static char fails[NT][200];
static atomic_int ready, verify, done;
static volatile sig_atomic_t usr2;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_t th[NT];
static int pa[2], pb[2]; // pipes that threads 4 and 5 wait on

static void on_usr2(int s) { (void)s; usr2 = 1; }

// affinity_wanted is the CPU set thread i binds itself to: the last CPU for
// the odd ones, every CPU the process started with for the others.
static cpu_set_t start_set;
static void affinity_wanted(int i, cpu_set_t *set) {
	*set = start_set;
	if (i % 2 == 1) {
		int last = -1;
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &start_set)) last = c;
		CPU_ZERO(set);
		CPU_SET(last, set);
	}
}

static void check_common(int i) {
	char name[16], want[16];
	snprintf(want, sizeof want, "wl-t%d", i);
	pthread_getname_np(pthread_self(), name, sizeof name);
	if (strcmp(name, want) != 0)
		snprintf(fails[i], sizeof fails[i], "thread %d name %s, want %s", i, name, want);
	else if (tls_value != 0x1000 + (uint64_t)i)
		snprintf(fails[i], sizeof fails[i], "thread %d TLS %#lx, want %#lx", i, tls_value, 0x1000 + (uint64_t)i);
	else if (syscall(SYS_gettid) != tids[i])
		snprintf(fails[i], sizeof fails[i], "thread %d tid %ld, want %d", i, syscall(SYS_gettid), tids[i]);
	else {
		cpu_set_t got, want;
		affinity_wanted(i, &want);
		if (sched_getaffinity(0, sizeof got, &got) != 0 || !CPU_EQUAL(&got, &want))
			snprintf(fails[i], sizeof fails[i], "thread %d CPU affinity: %d CPUs (first word %#lx), want %d (%#lx)", i,
			         CPU_COUNT(&got), ((unsigned long *)&got)[0], CPU_COUNT(&want), ((unsigned long *)&want)[0]);
	}
}

static void *worker(void *arg) {
	int i = (int)(intptr_t)arg;
	char name[16];
	snprintf(name, sizeof name, "wl-t%d", i);
	pthread_setname_np(pthread_self(), name);
	tls_value = 0x1000 + i;
	tids[i] = syscall(SYS_gettid);
	cpu_set_t cpus;
	affinity_wanted(i, &cpus);
	if (sched_setaffinity(0, sizeof cpus, &cpus) != 0)
		snprintf(fails[i], sizeof fails[i], "thread %d: sched_setaffinity: %m", i);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR2);
	if (i == 1) sigaddset(&m, SIGRTMIN + 2);
	if (i == 3) sigaddset(&m, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	atomic_fetch_add(&ready, 1);
	uint64_t n = 0, acc = 0;
	switch (i) {
	case 0: // busy
		while (!atomic_load(&verify)) { n++; acc += n; }
		if (acc != (n % 2 ? n * ((n + 1) / 2) : (n / 2) * (n + 1)))
			snprintf(fails[i], sizeof fails[i], "busy thread sum wrong");
		break;
	case 1: // sleeps in nanosleep, with a pending thread-directed signal
		while (!atomic_load(&verify)) {
			struct timespec ts = {0, 10000000};
			if (nanosleep(&ts, NULL) != 0) snprintf(fails[i], sizeof fails[i], "nanosleep failed: %m");
			n++;
		}
		sigset_t p;
		sigpending(&p);
		if (!sigismember(&p, SIGRTMIN + 2)) snprintf(fails[i], sizeof fails[i], "thread 1 lost its pending SIGRTMIN+2");
		break;
	case 2: // blocked on a condition variable (futex wait without timeout)
		pthread_mutex_lock(&mu);
		while (!atomic_load(&verify)) pthread_cond_wait(&cond, &mu);
		pthread_mutex_unlock(&mu);
		break;
	case 4: { // blocked in poll with a long timeout
		struct pollfd pf = {.fd = pa[0], .events = POLLIN};
		int r;
		while ((r = poll(&pf, 1, 60000)) < 0) ;
		char c;
		if (r != 1 || !(pf.revents & POLLIN) || read(pa[0], &c, 1) != 1 || c != 'p')
			snprintf(fails[i], sizeof fails[i], "poll returned %d revents %#x", r, pf.revents);
		break;
	}
	case 5: { // blocked in read on an empty pipe
		char c = 0;
		int r;
		while ((r = read(pb[0], &c, 1)) < 0) ;
		if (r != 1 || c != 'r') snprintf(fails[i], sizeof fails[i], "read returned %d (%c)", r, c);
		break;
	}
	case 3: { // blocked in sigwaitinfo
		sigset_t w;
		sigemptyset(&w);
		sigaddset(&w, SIGUSR1);
		siginfo_t si;
		int s;
		while ((s = sigwaitinfo(&w, &si)) < 0) ;
		if (s != SIGUSR1) snprintf(fails[i], sizeof fails[i], "sigwaitinfo got %d", s);
		break;
	}
	}
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR2) || sigismember(&cur, SIGUSR1) != (i == 3))
		snprintf(fails[i], sizeof fails[i], "thread %d signal mask changed", i);
	if (!fails[i][0]) check_common(i);
	atomic_fetch_add(&done, 1);
	return NULL;
}

static volatile sig_atomic_t trapped;
static void on_trap(int sig) { (void)sig; trapped = 1; }

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef IGNORE_TRAP
	struct sigaction trap = {.sa_handler = SIG_IGN};
#else
	struct sigaction trap = {.sa_handler = on_trap};
#endif
	sigaction(SIGTRAP, &trap, NULL);
	sched_getaffinity(0, sizeof start_set, &start_set);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	pipe(pa);
	pipe(pb);
	for (int i = 0; i < NT; i++) pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
	while (atomic_load(&ready) < NT) usleep(1000);
	pthread_kill(th[1], SIGRTMIN + 2);
	printf("READY\n");
	while (!usr2) usleep(5000); // pause() could miss a signal taken just before it
	atomic_store(&verify, 1);
	pthread_mutex_lock(&mu);
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&mu);
	pthread_kill(th[3], SIGUSR1);
	write(pa[1], "p", 1);
	write(pb[1], "r", 1);
	for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
	for (int i = 0; i < NT; i++)
		if (fails[i][0]) { printf("FAIL: %s\n", fails[i]); return 1; }
	struct sigaction o;
	if (sigaction(SIGTRAP, NULL, &o) != 0 || o.sa_handler != trap.sa_handler) { printf("FAIL: SIGTRAP disposition lost\n"); return 1; }
	raise(SIGTRAP); // ignored, or caught
#ifndef IGNORE_TRAP
	if (!trapped) { printf("FAIL: SIGTRAP handler did not run\n"); return 1; }
#endif
	printf("PASS\n");
	return 0;
}
