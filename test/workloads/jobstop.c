// build: -pthread
/*
 * jobstop.c - a process stopped by job control stays stopped across a
 * checkpoint, every thread of it, and carries on when continued.
 *
 * The root forks a child with two threads: the main one waits for SIGUSR1
 * (sigsuspend), the other spins. The root stops the child with SIGTSTP (a
 * shell's Ctrl-Z) and sees it stop, then prints READY and waits for
 * SIGUSR2. Then every thread of the child must still be stopped, and stay
 * so; after SIGCONT the child must run again, and exit 0 on SIGUSR1. The
 * root prints PASS (exit 0) or "FAIL: ..." (exit 1).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/wait.h>

#include "report.h"

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

static volatile unsigned long spins;
static void *spin(void *arg)
{
	(void)arg;
	for (;;)
		spins++;
	return NULL;
}

static int child(void)
{
	setpgid(0, 0);
	sigset_t usr1, none;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigemptyset(&none);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	pthread_t t;
	if (pthread_create(&t, NULL, spin, NULL))
		return 2;
	while (!got_usr1)
		sigsuspend(&none);
	return 0;
}

/* states returns how many threads pid has, and sets *all to how many of
 * them are in state want (a letter of /proc/PID/task/TID/stat). */
static int states(pid_t pid, char want, int *all)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = opendir(path);
	int n = 0;
	*all = 0;
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char p[128], buf[512];
		snprintf(p, sizeof(p), "/proc/%d/task/%s/stat", pid, e->d_name);
		int fd = open(p, O_RDONLY);
		ssize_t k = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		if (k <= 0)
			continue;
		buf[k] = 0;
		char *paren = strrchr(buf, ')');
		if (!paren || !paren[1])
			continue;
		n++;
		if (paren[2] == want)
			(*all)++;
	}
	closedir(d);
	return n;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0)
		_exit(child());
	/* A process group of its own, like a shell's job: SIGTSTP does not
	 * stop a member of an orphaned group (the root's own: its parent is
	 * in another session). */
	setpgid(kid, kid);
	int all, n;
	for (int i = 0; i < 1000 && states(kid, 'R', &all) < 2; i++)
		usleep(1000);
	if (kill(kid, SIGTSTP))
		die("kill SIGTSTP");
	int st;
	if (waitpid(kid, &st, WUNTRACED) != kid || !WIFSTOPPED(st))
		die("child did not stop");

	printf("READY\n");
	while (!got_usr2)
		pause();

	for (int round = 0; round < 2; round++) {
		n = states(kid, 'T', &all);
		if (n != 2 || all != n)
			fail("round %d: %d of the child's %d threads stopped, want 2 of 2", round, all, n);
		usleep(50000);
	}
	if (kill(kid, SIGCONT))
		fail("kill SIGCONT: %s", strerror(errno));
	int running = 0;
	for (int i = 0; i < 1000 && !running; i++) {
		states(kid, 'R', &running);
		usleep(1000);
	}
	if (!running)
		fail("the child's spinning thread does not run after SIGCONT");
	kill(kid, SIGUSR1);
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("child ended with status %#x, want exit 0", st);
	return report();
}
