// build:
// prctl: process attributes only prctl (or a /proc file of their own)
// shows. The root is a child subreaper, not dumpable, has transparent
// huge pages disabled, an OOM score adjustment of 300, a core dump
// filter of 0x7f and a timer slack of 123456 ns. Its
// child drops to uid and gid 65534 (which makes it undumpable, as any
// change of credentials does), makes itself dumpable again, and asks for
// SIGUSR1 when its parent dies. On SIGUSR2 the root checks its own
// attributes, has the child check its own (it reports through its exit
// status), and reports PASS or FAIL. A restart that set the child's
// credentials after its dumpable flag would leave it undumpable.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

// procfile reads (want == NULL) or writes one line of /proc/self/name.
static int procfile(const char *name, const char *want, char *got, size_t n) {
	char path[64];
	snprintf(path, sizeof path, "/proc/self/%s", name);
	FILE *f = fopen(path, want ? "w" : "r");
	if (!f) return -1;
	int ok = want ? fputs(want, f) >= 0 : fgets(got, (int)n, f) != NULL;
	return fclose(f) == 0 && ok ? 0 : -1;
}

static int child(int ready) {
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) return 10;
	if (prctl(PR_GET_DUMPABLE) != 0) return 11; // the credentials reset it
	if (prctl(PR_SET_DUMPABLE, 1) != 0 || prctl(PR_SET_PDEATHSIG, SIGUSR1) != 0) return 12;
	if (write(ready, "x", 1) != 1) return 13;
	close(ready);
	while (!verify) pause();
	int sig = 0;
	if (prctl(PR_GET_PDEATHSIG, &sig) != 0 || sig != SIGUSR1) return 2;
	if (prctl(PR_GET_DUMPABLE) != 1) return 3;
	return 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 || prctl(PR_SET_TIMERSLACK, 123456) != 0) {
		printf("FAIL: prctl\n");
		return 1;
	}
	if (procfile("oom_score_adj", "300", NULL, 0) != 0 || procfile("coredump_filter", "0x7f", NULL, 0) != 0) {
		printf("FAIL: write oom_score_adj or coredump_filter\n");
		return 1;
	}
	int p[2];
	if (pipe(p) != 0) { printf("FAIL: pipe\n"); return 1; }
	pid_t c = fork();
	if (c < 0) { printf("FAIL: fork\n"); return 1; }
	if (c == 0) {
		close(p[0]);
		_exit(child(p[1]));
	}
	close(p[1]);
	char x;
	if (read(p[0], &x, 1) != 1) { printf("FAIL: the child could not set itself up\n"); return 1; }
	close(p[0]);
	if (prctl(PR_SET_DUMPABLE, 0) != 0) { printf("FAIL: PR_SET_DUMPABLE\n"); return 1; }
	printf("READY\n");
	while (!verify) pause();

	int sub = 0;
	if (prctl(PR_GET_CHILD_SUBREAPER, &sub) != 0 || sub != 1) { printf("FAIL: not a child subreaper\n"); return 1; }
	if (prctl(PR_GET_DUMPABLE) != 0) { printf("FAIL: dumpable\n"); return 1; }
	if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) { printf("FAIL: transparent huge pages not disabled\n"); return 1; }
	if (prctl(PR_GET_TIMERSLACK) != 123456) { printf("FAIL: timer slack %d ns, want 123456\n", prctl(PR_GET_TIMERSLACK)); return 1; }
	char line[64];
	if (procfile("oom_score_adj", NULL, line, sizeof line) != 0 || strcmp(line, "300\n") != 0) { printf("FAIL: oom_score_adj %s", line); return 1; }
	if (procfile("coredump_filter", NULL, line, sizeof line) != 0 || strcmp(line, "0000007f\n") != 0) { printf("FAIL: coredump_filter %s", line); return 1; }
	kill(c, SIGUSR2);
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		printf("FAIL: child: status %#x (exit 2: parent death signal lost, 3: not dumpable, 1x: set-up)\n", st);
		return 1;
	}
	printf("PASS\n");
	return 0;
}
