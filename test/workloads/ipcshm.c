// build:
// ipcshm: SysV shared memory. Three segments: A (1 MiB + 100 bytes, mode
// 0640, attached by the parent and a child, partly written, counters keep
// changing), B (64 KiB, mode 0600, written and detached: attached by no
// one) and C (128 KiB, attached by both, then removed with IPC_RMID:
// SHM_DEST). On SIGUSR2 the parent checks every id, key, mode, size and
// content, that C is still marked for removal, and exchanges tokens with
// the child through A and C, which only works if they still share them.
// Needs an IPC namespace of its own (the test gives it one) or at least
// free keys 0x1c0c0a01..03.
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define KA 0x1c0c0a01
#define KB 0x1c0c0a02
#define KC 0x1c0c0a03
#define SA ((1 << 20) + 100)
#define SB (64 << 10)
#define SC (128 << 10)

struct hdr {
	atomic_long parent_count, child_count;
	atomic_int token, ack;
};

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }
static char pat(long i, int salt) { return (char)(i * 7 + salt); }

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

static int exchange(atomic_int *token, atomic_int *ack, int parent, int v) {
	for (int i = 0; i < 3000; i++) {
		if (parent) {
			atomic_store(token, v);
			if (atomic_load(ack) == v) return 1;
		} else if (atomic_load(token) == v) {
			atomic_store(ack, v);
			return 1;
		}
		usleep(1000);
	}
	return 0;
}

static int check_seg(int id, int key, size_t size, int mode, int dest) {
	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0, "shmctl IPC_STAT %d: %m", id);
	CHECK(ds.shm_segsz == size, "segment %d has %zu bytes, want %zu", id, ds.shm_segsz, size);
	CHECK((ds.shm_perm.mode & 0777) == mode, "segment %d mode %o, want %o", id, ds.shm_perm.mode & 0777, mode);
	CHECK(!!(ds.shm_perm.mode & SHM_DEST) == dest, "segment %d SHM_DEST is %d, want %d", id, !!(ds.shm_perm.mode & SHM_DEST), dest);
	if (!dest) {
		CHECK(ds.shm_perm.__key == key, "segment %d key %#x, want %#x", id, ds.shm_perm.__key, key);
		CHECK(shmget(key, 0, 0) == id, "key %#x gives id %d, want %d", key, shmget(key, 0, 0), id);
	}
	return 0;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	int ia = shmget(KA, SA, IPC_CREAT | IPC_EXCL | 0640);
	int ib = shmget(KB, SB, IPC_CREAT | IPC_EXCL | 0600);
	int ic = shmget(KC, SC, IPC_CREAT | IPC_EXCL | 0644);
	if (ia < 0 || ib < 0 || ic < 0) { printf("FAIL: shmget: %m (keys taken?)\n"); return 1; }
	char *a = shmat(ia, NULL, 0), *c = shmat(ic, NULL, 0), *b = shmat(ib, NULL, 0);
	if (a == (void *)-1 || b == (void *)-1 || c == (void *)-1) { printf("FAIL: shmat: %m\n"); return 1; }
	struct hdr *h = (struct hdr *)a, *hc = (struct hdr *)c;
	for (long i = 4096; i < SA / 2; i++) a[i] = pat(i, 1);
	a[SA - 1] = 42; // the partial last page
	for (long i = 0; i < SB; i++) b[i] = pat(i, 2);
	for (long i = 4096; i < SC; i++) c[i] = pat(i, 3);
	shmdt(b);
	pid_t ch = fork();
	if (ch == 0) {
		while (!verify) { atomic_fetch_add(&h->child_count, 1); usleep(1000); }
		int ok = exchange(&h->token, &h->ack, 0, 7) && exchange(&hc->token, &hc->ack, 0, 8);
		_exit(ok ? 0 : 1);
	}
	usleep(10000);
	shmctl(ic, IPC_RMID, NULL);
	printf("ids %d %d %d at %p %p\n", ia, ib, ic, (void *)a, (void *)c);
	printf("READY\n");
	while (!verify) { atomic_fetch_add(&h->parent_count, 1); usleep(1000); }

	if (check_seg(ia, KA, SA, 0640, 0) || check_seg(ib, KB, SB, 0600, 0) || check_seg(ic, 0, SC, 0644, 1)) return 1;
	for (long i = 4096; i < SA / 2; i++) CHECK(a[i] == pat(i, 1), "segment A byte %ld", i);
	for (long i = SA / 2; i < SA - 1; i += 512) CHECK(a[i] == 0, "segment A byte %ld not zero", i);
	CHECK(a[SA - 1] == 42, "segment A last byte %d", a[SA - 1]);
	for (long i = 4096; i < SC; i++) CHECK(c[i] == pat(i, 3), "segment C byte %ld", i);
	b = shmat(ib, NULL, SHM_RDONLY);
	CHECK(b != (void *)-1, "attach B: %m");
	for (long i = 0; i < SB; i++) CHECK(b[i] == pat(i, 2), "segment B byte %ld", i);
	shmdt(b);
	struct shmid_ds ds;
	shmctl(ia, IPC_STAT, &ds);
	CHECK(ds.shm_nattch == 2, "segment A has %lu attachments, want 2", (unsigned long)ds.shm_nattch);
	shmctl(ic, IPC_STAT, &ds);
	CHECK(ds.shm_nattch == 2, "segment C has %lu attachments, want 2", (unsigned long)ds.shm_nattch);
	CHECK(atomic_load(&h->child_count) > 0, "child never counted");
	kill(ch, SIGUSR2);
	CHECK(exchange(&h->token, &h->ack, 1, 7), "parent and child no longer share segment A");
	CHECK(exchange(&hc->token, &hc->ack, 1, 8), "parent and child no longer share segment C");
	int st;
	CHECK(waitpid(ch, &st, 0) == ch && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed (%#x)", st);
	// Leave nothing behind: C goes with its last detach.
	shmdt(a);
	shmdt(c);
	shmctl(ia, IPC_RMID, NULL);
	shmctl(ib, IPC_RMID, NULL);
	CHECK(shmctl(ic, IPC_STAT, &ds) < 0, "segment C survived its last detach");
	printf("PASS\n");
	return 0;
}
