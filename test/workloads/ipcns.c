// build:
// ipcns: the two ends of TestIPCNamespaceDumpRestore, each in an IPC
// namespace of its own.
//
// "ipcns fill" fills its namespace: segment A (100000 bytes, key
// 0x1c0c0e01, mode 0640, attached), B (8 KiB, key 0x1c0c0e02, created as
// uid 1000 / gid 1001, owned by 2000:2001, never attached), D (key
// 0x1c0c0e03, attached, then removed: SHM_DEST), queue Q (key 0x1c0c0e04,
// mode 0600, 5 messages of types 1-3), semaphore set S (key 0x1c0c0e05,
// values 3 9 then a child's semop -1 +2 with SEM_UNDO: 2 11), and a
// private queue. It prints "ids A B D Q S P", then "child PID" and READY,
// and waits to be killed.
//
// "ipcns check A B D Q S P" runs with a child of its own (whose pid it
// prints before READY), in the namespace ckpt restored. On SIGUSR1 it
// attaches A and D by id (the test then finishes the restore, which
// removes D again) and prints ATTACHED; on SIGUSR2 it checks every id,
// key, mode, owner, creator, content and value, then ends the child,
// whose restored undo list must put the values back to 3 9.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define KA 0x1c0c0e01
#define KB 0x1c0c0e02
#define KD 0x1c0c0e03
#define KQ 0x1c0c0e04
#define KS 0x1c0c0e05
#define SA 100000
#define SB 8192
#define SD 20000

static volatile sig_atomic_t sig1, sig2;
static void on_sig(int s) { if (s == SIGUSR1) sig1 = 1; else sig2 = 1; }

// await waits for a handler to set *flag. The signals are only taken inside
// sigsuspend: with pause(), one arriving between the test and the call (a
// window every restart reopens, as the call is restarted without a signal)
// would leave it waiting forever.
static void await(volatile sig_atomic_t *flag) {
	sigset_t both, old;
	sigemptyset(&both);
	sigaddset(&both, SIGUSR1);
	sigaddset(&both, SIGUSR2);
	sigprocmask(SIG_BLOCK, &both, &old);
	while (!*flag) sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

struct msg { long type; char text[256]; };
static char pat(long i, int salt) { return (char)(i * 11 + salt); }

static pid_t idle_child(void) {
	pid_t c = fork();
	if (c == 0) {
		for (;;) pause();
	}
	return c;
}

static int fill(void) {
	int a = shmget(KA, SA, IPC_CREAT | IPC_EXCL | 0640);
	setresgid(-1, 1001, -1);
	setresuid(-1, 1000, -1);
	int b = shmget(KB, SB, IPC_CREAT | IPC_EXCL | 0666);
	setresuid(-1, 0, -1);
	setresgid(-1, 0, -1);
	int d = shmget(KD, SD, IPC_CREAT | IPC_EXCL | 0600);
	int q = msgget(KQ, IPC_CREAT | IPC_EXCL | 0600);
	int s = semget(KS, 2, IPC_CREAT | IPC_EXCL | 0640);
	int p = msgget(IPC_PRIVATE, 0600);
	CHECK(a >= 0 && b >= 0 && d >= 0 && q >= 0 && s >= 0 && p >= 0, "create: %m");
	char *ma = shmat(a, NULL, 0), *mb = shmat(b, NULL, 0), *md = shmat(d, NULL, 0);
	CHECK(ma != (void *)-1 && mb != (void *)-1 && md != (void *)-1, "shmat: %m");
	for (long i = 0; i < SA; i += 3) ma[i] = pat(i, 1);
	for (long i = 0; i < SB; i++) mb[i] = pat(i, 2);
	for (long i = 8192; i < SD; i++) md[i] = pat(i, 3);
	shmdt(mb);
	struct shmid_ds ds;
	shmctl(b, IPC_STAT, &ds);
	ds.shm_perm.uid = 2000;
	ds.shm_perm.gid = 2001;
	CHECK(shmctl(b, IPC_SET, &ds) == 0, "IPC_SET B: %m");
	shmctl(d, IPC_RMID, NULL);
	struct msg m;
	for (int i = 0; i < 5; i++) {
		m.type = i % 3 + 1;
		snprintf(m.text, sizeof m.text, "message %d", i);
		CHECK(msgsnd(q, &m, strlen(m.text) + 1, 0) == 0, "msgsnd: %m");
	}
	unsigned short v[2] = {3, 9};
	semctl(s, 0, SETALL, v);
	int pfd[2];
	if (pipe(pfd) < 0) return 1;
	pid_t c = fork();
	if (c == 0) {
		struct sembuf ops[2] = {{0, -1, SEM_UNDO}, {1, 2, SEM_UNDO}};
		if (semop(s, ops, 2) < 0) _exit(2);
		write(pfd[1], "x", 1);
		for (;;) pause();
	}
	char x;
	CHECK(read(pfd[0], &x, 1) == 1, "child semop");
	printf("ids %d %d %d %d %d %d\n", a, b, d, q, s, p);
	printf("child %d\n", c);
	printf("READY\n");
	for (;;) pause();
}

static int values(int s, int v0, int v1) {
	unsigned short v[2];
	CHECK(semctl(s, 0, GETALL, v) == 0, "GETALL: %m");
	CHECK(v[0] == v0 && v[1] == v1, "semaphores %d %d, want %d %d", v[0], v[1], v0, v1);
	return 0;
}

static int check(int a, int b, int d, int q, int s, int p) {
	pid_t c = idle_child();
	printf("child %d\n", c);
	printf("READY\n");
	await(&sig1);
	char *ma = shmat(a, NULL, SHM_RDONLY), *md = shmat(d, NULL, SHM_RDONLY);
	CHECK(ma != (void *)-1 && md != (void *)-1, "shmat: %m");
	printf("ATTACHED\n");
	await(&sig2);

	CHECK(shmget(KA, 0, 0) == a && shmget(KB, 0, 0) == b, "shm keys give %d %d, want %d %d", shmget(KA, 0, 0), shmget(KB, 0, 0), a, b);
	CHECK(shmget(KD, 0, 0) < 0, "removed segment D still has its key");
	struct shmid_ds ds;
	CHECK(shmctl(a, IPC_STAT, &ds) == 0 && ds.shm_segsz == SA && (ds.shm_perm.mode & 0777) == 0640 && !(ds.shm_perm.mode & SHM_DEST), "segment A: %m, %zu bytes, mode %o", (size_t)ds.shm_segsz, ds.shm_perm.mode);
	CHECK(shmctl(b, IPC_STAT, &ds) == 0 && ds.shm_segsz == SB && (ds.shm_perm.mode & 0777) == 0666, "segment B: %m");
	CHECK(ds.shm_perm.uid == 2000 && ds.shm_perm.gid == 2001 && ds.shm_perm.cuid == 1000 && ds.shm_perm.cgid == 1001,
	      "segment B owner %d:%d creator %d:%d, want 2000:2001 and 1000:1001", ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.cuid, ds.shm_perm.cgid);
	CHECK(shmctl(d, IPC_STAT, &ds) == 0 && ds.shm_segsz == SD && (ds.shm_perm.mode & SHM_DEST) && ds.shm_nattch == 1, "segment D: %m, mode %o, %lu attached", ds.shm_perm.mode, (unsigned long)ds.shm_nattch);
	for (long i = 0; i < SA; i++) CHECK(ma[i] == (i % 3 ? 0 : pat(i, 1)), "segment A byte %ld", i);
	for (long i = 0; i < SD; i++) CHECK(md[i] == (i < 8192 ? 0 : pat(i, 3)), "segment D byte %ld", i);
	char *mb = shmat(b, NULL, SHM_RDONLY);
	CHECK(mb != (void *)-1, "attach B: %m");
	for (long i = 0; i < SB; i++) CHECK(mb[i] == pat(i, 2), "segment B byte %ld", i);

	CHECK(msgget(KQ, 0) == q, "queue key gives %d, want %d", msgget(KQ, 0), q);
	struct msqid_ds qs;
	CHECK(msgctl(p, IPC_STAT, &qs) == 0 && qs.msg_qnum == 0, "private queue %d: %m", p);
	struct msg m;
	int n = msgrcv(q, &m, sizeof m.text, 3, IPC_NOWAIT);
	CHECK(n > 0 && strcmp(m.text, "message 2") == 0, "first type-3 message: %d %s", n, n > 0 ? m.text : "");
	const char *rest[] = {"message 0", "message 1", "message 3", "message 4"};
	for (int i = 0; i < 4; i++) {
		n = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
		CHECK(n > 0 && strcmp(m.text, rest[i]) == 0, "message %d: %d %s", i, n, n > 0 ? m.text : "");
	}

	CHECK(semget(KS, 0, 0) == s, "semaphore key gives %d, want %d", semget(KS, 0, 0), s);
	if (values(s, 2, 11)) return 1;
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	if (values(s, 3, 9)) {
		printf("FAIL: the child's restored undo list was not applied when it exited\n");
		return 1;
	}
	printf("PASS\n");
	return 0;
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_sig};
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	if (argc == 2 && strcmp(argv[1], "fill") == 0) return fill();
	if (argc == 8 && strcmp(argv[1], "check") == 0)
		return check(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
	fprintf(stderr, "usage: ipcns fill | ipcns check A B D Q S P\n");
	return 2;
}
