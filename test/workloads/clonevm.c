// build:
// clonevm: a parent and a child created with clone(CLONE_VM) (no
// CLONE_THREAD): two processes in one address space. The child keeps
// counting in a global; on SIGUSR2 the parent checks the count still moves
// (it can only see it if they still share memory), stops the child through
// another global, and reaps it.
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[1 << 16];
static atomic_long count;
static atomic_int stop;
static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

static int child(void *a) {
	(void)a;
	while (!atomic_load(&stop)) {
		atomic_fetch_add(&count, 1);
		usleep(1000);
	}
	return 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	pid_t c = clone(child, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
	if (c < 0) { printf("FAIL: clone\n"); return 1; }
	while (atomic_load(&count) < 10) usleep(1000);
	printf("READY\n");
	while (!verify) usleep(10000);
	long a = atomic_load(&count);
	usleep(100000);
	long b = atomic_load(&count);
	if (b <= a) { printf("FAIL: the child's count stays at %ld: memory no longer shared\n", b); return 1; }
	atomic_store(&stop, 1);
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("FAIL: child status %#x\n", st); return 1; }
	printf("PASS\n");
	return 0;
}
