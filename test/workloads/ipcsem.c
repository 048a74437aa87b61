// build:
// ipcsem: a SysV semaphore set (key 0x1c0c0c01, mode 0660, 4 semaphores,
// values 5 0 7 100) and a child holding an undo list: it took one from
// semaphore 0 and gave two to semaphore 1 with SEM_UNDO (values now
// 4 2 7 100; its adjustments +1 and -2). On SIGUSR2 the parent checks
// id, key, mode and values, lets the child exit and checks that the kernel
// applied the child's undo list: 5 0 7 100.
// Needs its whole IPC namespace saved (container mode): in ckpt's own
// namespace semaphores and undo lists are not captured.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY 0x1c0c0c01

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

static int values(int id, const unsigned short *want) {
	unsigned short v[4];
	CHECK(semctl(id, 0, GETALL, v) == 0, "GETALL: %m");
	for (int i = 0; i < 4; i++) CHECK(v[i] == want[i], "semaphore %d is %d, want %d (values %d %d %d %d)", i, v[i], want[i], v[0], v[1], v[2], v[3]);
	return 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	int id = semget(KEY, 4, IPC_CREAT | IPC_EXCL | 0660);
	if (id < 0) { printf("FAIL: semget: %m (key taken?)\n"); return 1; }
	unsigned short init[4] = {5, 0, 7, 100};
	semctl(id, 0, SETALL, init);
	int pipefd[2];
	if (pipe(pipefd) < 0) return 1;
	pid_t c = fork();
	if (c == 0) {
		struct sembuf ops[2] = {{0, -1, SEM_UNDO}, {1, 2, SEM_UNDO}};
		if (semop(id, ops, 2) < 0) _exit(2);
		close(pipefd[0]);
		write(pipefd[1], "x", 1);
		for (;;) pause(); // until the parent ends it
	}
	close(pipefd[1]);
	char x;
	if (read(pipefd[0], &x, 1) != 1) { printf("FAIL: child semop\n"); return 1; }
	printf("id %d, child %d\n", id, c);
	printf("READY\n");
	while (!verify) usleep(1000);

	CHECK(semget(KEY, 0, 0) == id, "key %#x gives set %d, want %d", KEY, semget(KEY, 0, 0), id);
	struct semid_ds ds;
	CHECK(semctl(id, 0, IPC_STAT, &ds) == 0, "IPC_STAT: %m");
	CHECK((ds.sem_perm.mode & 0777) == 0660 && ds.sem_nsems == 4, "mode %o, %lu semaphores", ds.sem_perm.mode & 0777, (unsigned long)ds.sem_nsems);
	unsigned short held[4] = {4, 2, 7, 100};
	if (values(id, held)) return 1;
	kill(c, SIGTERM);
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFSIGNALED(st), "child ended with %#x", st);
	if (values(id, init)) {
		printf("FAIL: the child's undo list was not applied when it exited\n");
		return 1;
	}
	semctl(id, 0, IPC_RMID);
	printf("PASS\n");
	return 0;
}
