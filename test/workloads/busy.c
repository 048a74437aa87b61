// build:
// busy: a CPU-bound counter holding 64 MiB of pseudo-random heap, a sparse
// 1 GiB mapping with a few touched pages, pages only ever read (they map
// the shared zero page), and a 256 MiB PROT_NONE reservation (as Go and
// Java runtimes make) with a few pages of data, written while they were
// writable. On SIGUSR2 it recomputes everything from the seed and reports
// PASS or FAIL.
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HEAP_BYTES (64UL << 20)
#define SPARSE_BYTES (1UL << 30)
#define SPARSE_STEP (1024UL * 4096)
#define NONE_BYTES (256UL << 20)
#define NONE_STEP (64UL << 20)

static volatile sig_atomic_t verify;
static void on_usr2(int sig) { (void)sig; verify = 1; }

static uint64_t next(uint64_t *s) {
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);

	size_t n = HEAP_BYTES / 8;
	uint64_t *heap = malloc(HEAP_BYTES);
	if (!heap) { printf("FAIL: malloc\n"); return 1; }
	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < n; i++) heap[i] = next(&seed);

	char *sparse = mmap(NULL, SPARSE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (sparse == MAP_FAILED) { printf("FAIL: mmap\n"); return 1; }
	for (size_t i = 0; i < SPARSE_BYTES / SPARSE_STEP; i++) sparse[i * SPARSE_STEP + i] = (char)(i + 1);
	volatile char sink = 0;
	for (size_t i = 1; i < 64; i++) sink += sparse[i * 4096]; // read faults: zero page

	char *none = mmap(NULL, NONE_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (none == MAP_FAILED) { printf("FAIL: mmap PROT_NONE\n"); return 1; }
	for (size_t k = 0; k < NONE_BYTES / NONE_STEP; k++) {
		char *p = none + k * NONE_STEP + 8192;
		if (mprotect(p, 4096, PROT_READ | PROT_WRITE) != 0) { printf("FAIL: mprotect\n"); return 1; }
		memset(p, (int)(k + 7), 4096);
		if (mprotect(p, 4096, PROT_NONE) != 0) { printf("FAIL: mprotect\n"); return 1; }
	}

	char stackpat[256];
	for (int i = 0; i < 256; i++) stackpat[i] = (char)(i * 3);

	printf("READY\n");
	uint64_t counter = 0, acc = 0;
	while (!verify) {
		counter++;
		acc += counter;
		heap[counter % n] ^= 0; // touch without changing
	}

	seed = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < n; i++) {
		uint64_t want = next(&seed);
		if (heap[i] != want) { printf("FAIL: heap word %zu is %#lx, want %#lx\n", i, heap[i], want); return 1; }
	}
	for (size_t i = 0; i < SPARSE_BYTES / SPARSE_STEP; i++) {
		if (sparse[i * SPARSE_STEP + i] != (char)(i + 1)) { printf("FAIL: sparse page %zu lost its byte\n", i); return 1; }
		if (i > 0 && sparse[i * SPARSE_STEP - 4096 + 5] != 0) { printf("FAIL: untouched page before %zu is not zero\n", i); return 1; }
	}
	for (size_t i = 1; i < 64; i++)
		if (sparse[i * 4096] != 0) { printf("FAIL: zero page %zu is not zero\n", i); return 1; }
	if (mprotect(none, NONE_BYTES, PROT_READ) != 0) { printf("FAIL: mprotect after restore\n"); return 1; }
	for (size_t k = 0; k < NONE_BYTES / NONE_STEP; k++) {
		char *p = none + k * NONE_STEP + 8192;
		for (int i = 0; i < 4096; i++)
			if (p[i] != (char)(k + 7)) { printf("FAIL: PROT_NONE page %zu byte %d is %d\n", k, i, p[i]); return 1; }
		if (p[4096] != 0 || p[-4096] != 0) { printf("FAIL: untouched PROT_NONE page next to %zu is not zero\n", k); return 1; }
	}
	for (int i = 0; i < 256; i++)
		if (stackpat[i] != (char)(i * 3)) { printf("FAIL: stack byte %d\n", i); return 1; }
	uint64_t want = counter % 2 == 0 ? (counter / 2) * (counter + 1) : counter * ((counter + 1) / 2); // wraps like acc
	if (counter == 0 || acc != want) { printf("FAIL: counter %lu acc %lu\n", counter, acc); return 1; }
	printf("counted %lu\nPASS\n", counter);
	return 0;
}
