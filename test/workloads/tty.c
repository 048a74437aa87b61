// build:
// tty: a job run from an interactive shell, with stdin, stdout and stderr on
// a terminal and its process group in the terminal's foreground. On SIGUSR2
// it checks that this still holds (on whatever terminal it now has) and
// that it can read a line typed at the terminal.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	if (!isatty(0) || !isatty(1) || !isatty(2)) { printf("FAIL: not started on a terminal\n"); return 1; }
	printf("READY\n");
	while (!verify) usleep(10000);
	for (int fd = 0; fd < 3; fd++)
		if (!isatty(fd)) { printf("FAIL: fd %d is no longer a terminal\n", fd); return 1; }
	if (tcgetpgrp(0) != getpgrp()) { printf("FAIL: foreground group is %d, not ours (%d)\n", tcgetpgrp(0), getpgrp()); return 1; }
	char line[64] = {0};
	if (!fgets(line, sizeof line, stdin) || strncmp(line, "hello", 5) != 0) { printf("FAIL: read %s from the terminal\n", line); return 1; }
	printf("PASS\n");
	return 0;
}
