// build:
// daemon: daemonises the classic way (fork, setsid, fork, the session
// leader exits), so the daemon's session and group bear the PID of a
// process that is gone. It writes its PID to daemon.pid. On SIGUSR2 it
// checks its session and group are still that PID.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	pid_t c = fork();
	if (c > 0) {
		waitpid(c, NULL, 0);
		return 0;
	}
	setsid();
	pid_t sid = getpid();
	if (fork() > 0) _exit(0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	FILE *f = fopen("daemon.pid", "w");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	printf("READY\n");
	while (!verify) usleep(10000);
	if (getsid(0) != sid) { printf("FAIL: session %d, want %d (its dead leader's)\n", getsid(0), sid); return 1; }
	if (getpgrp() != sid) { printf("FAIL: group %d, want %d\n", getpgrp(), sid); return 1; }
	printf("PASS\n");
	return 0;
}
