// build:
// clonefiles: a parent and a child created with clone(CLONE_FILES), sharing
// one descriptor table. On SIGUSR2 the child opens a file and tells the
// parent its number through a pipe; the parent checks the descriptor exists
// in its own table too, which holds only if the table is still shared.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[1 << 16];
static int p[2];
static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

static int child(void *a) {
	(void)a;
	while (!verify) usleep(10000);
	int k = open("/dev/null", O_RDONLY);
	write(p[1], &k, sizeof k);
	return k < 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	pipe(p);
	pid_t c = clone(child, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL);
	if (c < 0) { printf("FAIL: clone\n"); return 1; }
	printf("READY\n");
	while (!verify) usleep(10000);
	kill(c, SIGUSR2);
	int k = -1;
	if (read(p[0], &k, sizeof k) != sizeof k || k < 0) { printf("FAIL: no descriptor number from the child\n"); return 1; }
	if (fcntl(k, F_GETFD) < 0) { printf("FAIL: fd %d opened by the child is not in the parent's table: not shared\n", k); return 1; }
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("FAIL: child status %#x\n", st); return 1; }
	printf("PASS\n");
	return 0;
}
