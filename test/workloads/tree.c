// build:
// tree: the seed's multi-process tests in one tree. The root leads its own
// process group and holds pipes: one to child 1 with unread data
// (buffered), one back from it (empty), and one with both ends in the root
// (pipes2). Child 2 leads another group that its own child (a grandchild)
// joins. Child 3 exits with status 7 and stays a zombie until the end. With
// argument "big" the root also holds 64 MiB of pseudo-random heap (bigmem).
// On SIGUSR2 the root checks itself, has every child check itself, reaps
// them all and reports PASS or FAIL.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

static void wait_verify(void) {
	while (!verify) {
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL);
	}
}

static uint64_t next(uint64_t *s) {
	uint64_t x = *s;
	x ^= x << 13; x ^= x >> 7; x ^= x << 17;
	return *s = x;
}

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

static char pattern(int i) { return (char)(i * 13 + 1); }

static int shared_fd; // one open file description, shared by the root and child 1

static int child1(int a_rd, int b_wr) {
	wait_verify();
	CHECK(write(shared_fd, "child", 5) == 5, "child 1: write to the shared file");
	char buf[4096];
	int n = 0;
	while (n < 4096) {
		int k = read(a_rd, buf + n, sizeof buf - n);
		CHECK(k > 0, "child 1: read buffered pipe data: %s", k < 0 ? strerror(errno) : "EOF");
		n += k;
	}
	for (int i = 0; i < 4096; i++) CHECK(buf[i] == pattern(i), "child 1: pipe byte %d is %d", i, buf[i]);
	CHECK(write(b_wr, "ok", 2) == 2, "child 1: write back: %s", strerror(errno));
	return 0;
}

static int grandchild(pid_t group) {
	wait_verify();
	CHECK(getpgrp() == group, "grandchild: group %d, want %d", getpgrp(), group);
	return 0;
}

static int child2(pid_t rootsid) {
	setpgid(0, 0);
	pid_t g = fork();
	if (g == 0) {
		setpgid(0, getppid());
		exit(grandchild(getppid()));
	}
	setpgid(g, getpid());
	wait_verify();
	CHECK(getpgrp() == getpid(), "child 2: group %d, want its own %d", getpgrp(), getpid());
	CHECK(getsid(0) == rootsid, "child 2: session %d, want %d", getsid(0), rootsid);
	kill(g, SIGUSR2);
	int st;
	CHECK(waitpid(g, &st, 0) == g, "child 2: wait grandchild: %s", strerror(errno));
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child 2: grandchild failed (status %#x)", st);
	return 0;
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	setpgid(0, 0);
	int big = argc > 1 && strcmp(argv[1], "big") == 0;
	uint64_t *heap = NULL;
	size_t nheap = (64UL << 20) / 8;
	if (big) {
		heap = malloc(nheap * 8);
		uint64_t s = 12345;
		for (size_t i = 0; i < nheap; i++) heap[i] = next(&s);
	}
	shared_fd = open("shared.txt", O_CREAT | O_TRUNC | O_RDWR, 0600);
	write(shared_fd, "root:", 5);
	int a[2], b[2], c[2];
	pipe(a);
	pipe(b);
	pipe(c);
	pid_t k1 = fork();
	if (k1 == 0) {
		close(a[1]); close(b[0]); close(c[0]); close(c[1]);
		exit(child1(a[0], b[1]));
	}
	close(a[0]); close(b[1]);
	pid_t k2 = fork();
	if (k2 == 0) exit(child2(getsid(0)));
	pid_t k3 = fork();
	if (k3 == 0) exit(7);
	char buf[4096];
	for (int i = 0; i < 4096; i++) buf[i] = pattern(i);
	write(a[1], buf, sizeof buf); // stays unread in the pipe until the check
	write(c[1], "both ends here", 14);
	// Wait until child 3 is a zombie and child 2's group is complete.
	for (;;) {
		char path[64], st[256];
		snprintf(path, sizeof path, "/proc/%d/stat", k3);
		FILE *f = fopen(path, "r");
		if (f && fgets(st, sizeof st, f) && strstr(st, ") Z ")) { fclose(f); break; }
		if (f) fclose(f);
		usleep(1000);
	}
	usleep(20000);
	printf("READY\n");
	wait_verify();

	CHECK(getpgrp() == getpid(), "root: group %d, want its own %d", getpgrp(), getpid());
	char got[32] = {0};
	CHECK(read(c[0], got, 14) == 14 && memcmp(got, "both ends here", 14) == 0, "root: pipe with both ends lost its data (%s)", got);
	if (big) {
		uint64_t s = 12345;
		for (size_t i = 0; i < nheap; i++) CHECK(heap[i] == next(&s), "root: heap word %zu differs", i);
	}
	kill(k1, SIGUSR2);
	kill(k2, SIGUSR2);
	memset(got, 0, sizeof got);
	CHECK(read(b[0], got, 2) == 2 && memcmp(got, "ok", 2) == 0, "root: no answer from child 1 through the empty pipe");
	// Child 1 wrote through the same open file description: the root's
	// offset moved too.
	CHECK(lseek(shared_fd, 0, SEEK_CUR) == 10, "root: shared file offset %ld, want 10 (the description is no longer shared)", (long)lseek(shared_fd, 0, SEEK_CUR));
	int st;
	CHECK(waitpid(k3, &st, 0) == k3 && WIFEXITED(st) && WEXITSTATUS(st) == 7, "root: zombie child 3 status %#x, want exit 7", st);
	CHECK(waitpid(k1, &st, 0) == k1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "root: child 1 failed (status %#x)", st);
	CHECK(waitpid(k2, &st, 0) == k2 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "root: child 2 failed (status %#x)", st);
	printf("PASS\n");
	return 0;
}
