// build:
// ipcmsq: a SysV message queue (key 0x1c0c0b01, mode 0620) holding ten
// messages of types 1-3 and various sizes, and an empty private queue
// (mode 0600). On SIGUSR2 it checks ids, keys, modes and the message
// count, receives by type (the first type-2 message, then type 3), then
// every other message in order, and checks each one's content.
// In ckpt's own IPC namespace message queues are not saved: the queue
// survives a restart there only because it outlives its process. Whole
// IPC namespaces (containers) save them.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <unistd.h>

#define KEY 0x1c0c0b01
#define N 10

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

struct msg { long type; char text[4096]; };

static long type_of(int i) { return i % 3 + 1; }
static int len_of(int i) { return 1 + i * 397 % 2000; }
static void fill(struct msg *m, int i) {
	m->type = type_of(i);
	for (int j = 0; j < len_of(i); j++) m->text[j] = (char)(i * 13 + j);
}
static int same(struct msg *m, int n, int i) {
	struct msg want;
	fill(&want, i);
	return n == len_of(i) && m->type == want.type && memcmp(m->text, want.text, n) == 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	int q = msgget(KEY, IPC_CREAT | IPC_EXCL | 0620);
	int p = msgget(IPC_PRIVATE, 0600);
	if (q < 0 || p < 0) { printf("FAIL: msgget: %m (key taken?)\n"); return 1; }
	static struct msg m;
	for (int i = 0; i < N; i++) {
		fill(&m, i);
		if (msgsnd(q, &m, len_of(i), IPC_NOWAIT) < 0) { printf("FAIL: msgsnd %d: %m\n", i); return 1; }
	}
	printf("ids %d %d\n", q, p);
	printf("READY\n");
	while (!verify) usleep(1000);

	CHECK(msgget(KEY, 0) == q, "key %#x gives queue %d, want %d", KEY, msgget(KEY, 0), q);
	struct msqid_ds ds;
	CHECK(msgctl(q, IPC_STAT, &ds) == 0, "IPC_STAT %d: %m", q);
	CHECK((ds.msg_perm.mode & 0777) == 0620, "queue mode %o", ds.msg_perm.mode & 0777);
	CHECK(ds.msg_qnum == N, "queue holds %lu messages, want %d", (unsigned long)ds.msg_qnum, N);
	CHECK(msgctl(p, IPC_STAT, &ds) == 0 && ds.msg_qnum == 0 && (ds.msg_perm.mode & 0777) == 0600, "private queue %d: %m", p);
	int done[N] = {0};
	// The first type-2 message is number 1, the first type-3 number 2.
	int n = msgrcv(q, &m, sizeof m.text, 2, IPC_NOWAIT);
	CHECK(n >= 0 && same(&m, n, 1), "first message of type 2 (got %d bytes, type %ld)", n, m.type);
	done[1] = 1;
	n = msgrcv(q, &m, sizeof m.text, 3, IPC_NOWAIT);
	CHECK(n >= 0 && same(&m, n, 2), "first message of type 3 (got %d bytes, type %ld)", n, m.type);
	done[2] = 1;
	for (int i = 0; i < N; i++) {
		if (done[i]) continue;
		n = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
		CHECK(n >= 0 && same(&m, n, i), "message %d out of order or changed (got %d bytes, type %ld)", i, n, m.type);
	}
	CHECK(msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) < 0, "an extra message");
	msgctl(q, IPC_RMID, NULL);
	msgctl(p, IPC_RMID, NULL);
	printf("PASS\n");
	return 0;
}
