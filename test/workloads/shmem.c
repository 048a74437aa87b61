// build:
// shmem: the seed's shared-memory test and its relatives. Parent and child
// share three objects: MAP_SHARED|MAP_ANONYMOUS memory (1 MiB, half of it
// touched), a shared mapping of /dev/zero, and a memfd that the parent also
// holds open at offset 100. Both processes count in the anonymous memory.
// On SIGUSR2 the parent checks the contents, then exchanges tokens with the
// child through each object: that only works if they still share them. A
// regular file mapped MAP_SHARED by both is checked the same way, and
// through the file itself.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ANON (1 << 20)
#define SMALL (64 << 10)

struct shared {
	atomic_long parent_count, child_count;
	atomic_int token[3], ack[3];
	char data[];
};

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }
static char pat(long i, int salt) { return (char)(i * 31 + salt); }

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

static int exchange(atomic_int *token, atomic_int *ack, int me_parent, int v) {
	for (int i = 0; i < 2000; i++) {
		if (me_parent) {
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

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	struct shared *a = mmap(NULL, ANON, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int z = open("/dev/zero", O_RDWR);
	char *zm = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_SHARED, z, 0);
	close(z);
	int mfd = memfd_create("wl-memfd", 0);
	ftruncate(mfd, SMALL);
	char *mm = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	int ff = open("mapped.bin", O_CREAT | O_TRUNC | O_RDWR, 0600);
	ftruncate(ff, SMALL);
	char *fm = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_SHARED, ff, 0);
	close(ff);
	for (long i = 128; i < SMALL; i++) fm[i] = pat(i, 4);
	long n = ANON / 2 - sizeof(struct shared);
	for (long i = 0; i < n; i++) a->data[i] = pat(i, 1);
	for (long i = 0; i < SMALL; i++) zm[i] = pat(i, 2), mm[i] = pat(i, 3);
	lseek(mfd, 100, SEEK_SET);
	pid_t c = fork();
	if (c == 0) {
		while (!verify) { atomic_fetch_add(&a->child_count, 1); usleep(1000); }
		int ok = exchange(&a->token[0], &a->ack[0], 0, 7) &&
			exchange((atomic_int *)zm, (atomic_int *)(zm + 64), 0, 8) &&
			exchange((atomic_int *)mm, (atomic_int *)(mm + 64), 0, 9) &&
			exchange((atomic_int *)fm, (atomic_int *)(fm + 64), 0, 10);
		_exit(ok ? 0 : 1);
	}
	usleep(20000);
	printf("READY\n");
	while (!verify) { atomic_fetch_add(&a->parent_count, 1); usleep(1000); }

	for (long i = 0; i < n; i++) CHECK(a->data[i] == pat(i, 1), "anonymous shared byte %ld", i);
	for (long i = 0; i < ANON / 2 - 4096; i += 4096) CHECK(((char *)a)[ANON / 2 + i] == 0, "untouched shared page at %ld not zero", ANON / 2 + i);
	for (long i = 128; i < SMALL; i++) CHECK(zm[i] == pat(i, 2), "/dev/zero shared byte %ld", i);
	for (long i = 128; i < SMALL; i++) CHECK(mm[i] == pat(i, 3), "memfd byte %ld", i);
	CHECK(lseek(mfd, 0, SEEK_CUR) == 100, "memfd offset %ld, want 100", (long)lseek(mfd, 0, SEEK_CUR));
	char b;
	CHECK(pread(mfd, &b, 1, 200) == 1 && b == pat(200, 3), "memfd descriptor does not see the mapped data");
	CHECK(atomic_load(&a->child_count) > 0, "child never counted");
	kill(c, SIGUSR2);
	CHECK(exchange(&a->token[0], &a->ack[0], 1, 7), "parent and child no longer share the anonymous memory");
	CHECK(exchange((atomic_int *)zm, (atomic_int *)(zm + 64), 1, 8), "parent and child no longer share the /dev/zero mapping");
	CHECK(exchange((atomic_int *)mm, (atomic_int *)(mm + 64), 1, 9), "parent and child no longer share the memfd");
	CHECK(exchange((atomic_int *)fm, (atomic_int *)(fm + 64), 1, 10), "parent and child no longer share the file mapping");
	for (long i = 128; i < SMALL; i++) CHECK(fm[i] == pat(i, 4), "shared file mapping byte %ld", i);
	int rf = open("mapped.bin", O_RDONLY);
	CHECK(pread(rf, &b, 1, 300) == 1 && b == pat(300, 4), "the file does not hold what its shared mapping shows");
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed (%#x)", st);
	printf("PASS\n");
	return 0;
}
