// build:
// deadleader: a process group whose leader has exited. The root forks A,
// which leads its own group, and B, which joins A's group; then A exits and
// is reaped. B's group still bears A's PID. On SIGUSR2 B checks its group
// and session, and the root reports.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	pid_t a = fork();
	if (a == 0) {
		setpgid(0, 0);
		pause();
		_exit(0);
	}
	setpgid(a, a);
	pid_t sid = getsid(0);
	pid_t b = fork();
	if (b == 0) {
		setpgid(0, a);
		while (!verify) usleep(10000);
		if (getpgrp() != a) { printf("FAIL: B is in group %d, want %d (its dead leader's)\n", getpgrp(), a); _exit(1); }
		if (getsid(0) != sid) { printf("FAIL: B is in session %d, want %d\n", getsid(0), sid); _exit(1); }
		_exit(0);
	}
	setpgid(b, a);
	kill(a, SIGKILL);
	waitpid(a, NULL, 0);
	printf("READY\n");
	while (!verify) usleep(10000);
	kill(b, SIGUSR2);
	int st;
	if (waitpid(b, &st, 0) != b || !WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("FAIL: B status %#x\n", st); return 1; }
	printf("PASS\n");
	return 0;
}
