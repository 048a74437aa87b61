// build:
// jobshell: the smallest interactive shell: it runs argv[1] as a job in its
// own process group, in the foreground of the terminal on its stdin, and
// waits for it. (The harness starts it as the session leader of a pty.)
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	signal(SIGTTOU, SIG_IGN);
	pid_t c = fork();
	if (c == 0) {
		setpgid(0, 0);
		tcsetpgrp(0, getpid());
		signal(SIGTTOU, SIG_DFL);
		execv(argv[1], argv + 1);
		_exit(127);
	}
	setpgid(c, c);
	tcsetpgrp(0, c);
	int st;
	waitpid(c, &st, 0);
	return 0;
}
