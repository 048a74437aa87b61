// build:
// container: the init of a container (ckpt run --pid --uts --time ...).
// It checks that it is PID 1 of its namespace, that its children keep
// their PIDs inside it (one answers over a pipe with its own getpid()),
// that it still reaps orphans, and that the host name and the time
// namespace's clock offset survive. argv[1] is the expected host name,
// argv[2] the minimum CLOCK_MONOTONIC in seconds (the offset); argv[3],
// if given, a shell command whose output must not change across the
// restart (e.g. `ip -o addr` in a network namespace of its own).
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t verify;

// run returns the output of a shell command (at most 64 KiB).
static char *run(const char *cmd) {
	static char bufs[2][65536];
	static int which;
	char *buf = bufs[which++ % 2];
	FILE *f = popen(cmd, "r");
	if (!f)
		return NULL;
	size_t n = fread(buf, 1, 65535, f);
	buf[n] = 0;
	if (pclose(f) != 0)
		return NULL;
	return buf;
}
static void on_usr2(int s) { (void)s; verify = 1; }

#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); exit(1); } } while (0)

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	CHECK(argc == 3 || argc == 4, "usage: container HOSTNAME MIN_MONOTONIC_S [COMMAND]");
	const char *before = NULL;
	if (argc == 4) {
		before = run(argv[3]);
		CHECK(before != NULL, "command %s failed", argv[3]);
	}
	long min_mono = atol(argv[2]);
	CHECK(getpid() == 1, "pid %d, want 1", getpid());
	char host[65] = "";
	gethostname(host, sizeof host);
	CHECK(strcmp(host, argv[1]) == 0, "host name %s, want %s", host, argv[1]);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);

	int req[2], ans[2];
	CHECK(pipe(req) == 0 && pipe(ans) == 0, "pipe");
	pid_t echo = fork();
	if (echo == 0) {
		close(req[1]);
		close(ans[0]);
		char c;
		while (read(req[0], &c, 1) == 1) {
			pid_t me = getpid();
			write(ans[1], &me, sizeof me);
		}
		_exit(0);
	}
	close(req[0]);
	close(ans[1]);
	// An orphan: its parent exits at once, so the init inherits it.
	int orph[2];
	CHECK(pipe(orph) == 0, "pipe");
	pid_t mid = fork();
	if (mid == 0) {
		close(req[1]);
		close(ans[0]);
		if (fork() == 0) {
			close(orph[1]);
			char c;
			read(orph[0], &c, 1); // until the init closes its end
			_exit(7);
		}
		_exit(0);
	}
	close(orph[0]);
	int st;
	CHECK(waitpid(mid, &st, 0) == mid, "reap middle");
	if (before)
		printf("state:\n%s", before);
	// SIGUSR2 is only taken inside sigsuspend: with pause(), one arriving
	// between the test and the call would leave init waiting forever.
	sigset_t usr2, old;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, &old);
	printf("READY\n");
	while (!verify)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);

	CHECK(getpid() == 1 && getppid() == 0, "pid %d ppid %d after restart", getpid(), getppid());
	gethostname(host, sizeof host);
	CHECK(strcmp(host, argv[1]) == 0, "host name %s after restart, want %s", host, argv[1]);
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	CHECK(ts.tv_sec >= min_mono, "CLOCK_MONOTONIC %lds, want at least %lds (time namespace offset lost)", (long)ts.tv_sec, min_mono);
	CHECK(write(req[1], "?", 1) == 1, "ask echo");
	pid_t got = 0;
	CHECK(read(ans[0], &got, sizeof got) == sizeof got, "echo answer");
	CHECK(got == echo, "echo child says it is %d, want %d", got, echo);
	close(req[1]);
	CHECK(waitpid(echo, &st, 0) == echo && WIFEXITED(st) && WEXITSTATUS(st) == 0, "reap echo");
	close(orph[1]);
	pid_t o = wait(&st);
	CHECK(o > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 7, "reap orphan: %d status %#x", o, st);
	if (before) {
		const char *after = run(argv[3]);
		CHECK(after != NULL, "command %s failed after restart", argv[3]);
		CHECK(strcmp(before, after) == 0, "state changed; before:\n%safter:\n%s", before, after);
	}
	printf("PASS\n");
	return 0;
}
