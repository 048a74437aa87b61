// build:
// ipcshm_multi: two IPC namespaces in one tree. The parent creates segment
// key 0x1c0c0d01 (16 KiB, pattern 1); its child unshares its IPC
// namespace (CLONE_NEWIPC) and creates a segment of the same key (32 KiB,
// pattern 2), both attached. On SIGUSR2 each checks its own segment
// (size, key, id, content) from inside its namespace and that it cannot
// see the other's. Needs container mode: the child's namespace is nested.
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY 0x1c0c0d01

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

static int run(size_t size, int salt, const char *who, int pipew) {
	int id = shmget(KEY, size, IPC_CREAT | IPC_EXCL | 0600);
	CHECK(id >= 0, "%s: shmget: %m", who);
	char *m = shmat(id, NULL, 0);
	CHECK(m != (void *)-1, "%s: shmat: %m", who);
	for (size_t i = 0; i < size; i++) m[i] = (char)(i * 5 + salt);
	if (pipew >= 0) {
		write(pipew, "x", 1);
		close(pipew);
	}
	printf("%s: id %d\n", who, id);
	return id;
}

static int check(int id, size_t size, int salt, const char *who, char *m) {
	CHECK(shmget(KEY, 0, 0) == id, "%s: key gives %d, want %d", who, shmget(KEY, 0, 0), id);
	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_segsz == size, "%s: segment %d has %zu bytes, want %zu (%m)", who, id, (size_t)ds.shm_segsz, size);
	for (size_t i = 0; i < size; i++) CHECK(m[i] == (char)(i * 5 + salt), "%s: byte %zu", who, i);
	return 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	int pfd[2];
	if (pipe(pfd) < 0) return 1;
	pid_t c = fork();
	if (c == 0) {
		close(pfd[0]);
		if (unshare(CLONE_NEWIPC) < 0) { printf("FAIL: unshare: %m\n"); _exit(1); }
		int id = run(32 << 10, 2, "child", pfd[1]);
		if (id < 0) _exit(1);
		char *m = shmat(id, NULL, SHM_RDONLY);
		while (!verify) usleep(1000);
		_exit(check(id, 32 << 10, 2, "child", m) ? 1 : 0);
	}
	close(pfd[1]);
	char x;
	if (read(pfd[0], &x, 1) != 1) { printf("FAIL: child setup\n"); return 1; }
	int id = run(16 << 10, 1, "parent", -1);
	if (id < 0) return 1;
	char *m = shmat(id, NULL, SHM_RDONLY);
	printf("READY\n");
	while (!verify) usleep(1000);
	if (check(id, 16 << 10, 1, "parent", m)) return 1;
	kill(c, SIGUSR2);
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed (%#x)", st);
	shmctl(id, IPC_RMID, NULL);
	printf("PASS\n");
	return 0;
}
