// build:
/*
 * stack.c - areas that grow down must still grow after a restart.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; it then
 * prints PASS (exit 0) or "FAIL: ..." (exit 1) as its last line. A lost
 * grows-down flag shows as a SIGSEGV instead.
 *
 * Set up: a MAP_GROWSDOWN area of its own, grown once below its start, with
 * a pattern in it. Checked after the signal: the main stack grows by 4 MiB
 * (recursion, each frame touching 4 KiB), the MAP_GROWSDOWN area grows by
 * 64 KiB more below its start, and the pattern is intact.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

/* Recurses depth times, each frame touching a 4 KiB array: the stack grows
 * by about depth * 4 KiB. Returns a sum the compiler cannot fold away. */
static unsigned long deep(int depth) {
	volatile char frame[4096];
	memset((char *)frame, depth & 0xff, sizeof frame);
	if (depth == 0) return frame[100];
	return deep(depth - 1) + frame[4000];
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	size_t n = 64 << 10;
	char *g = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0);
	if (g == MAP_FAILED) { printf("FAIL: mmap MAP_GROWSDOWN\n"); return 1; }
	for (size_t i = 0; i < n; i++) g[i] = (char)(i % 241 + 1);
	/* Grow it once before the checkpoint: 16 KiB below its start. */
	for (char *p = g - 4096; p >= g - 16384; p -= 4096) *p = 7;
	printf("READY\n");
	while (!verify) usleep(10000);
	if (deep(1024) == 12345) printf("unlikely\n");
	for (char *p = g - 20480; p >= g - 16384 - 65536; p -= 4096) *p = 9;
	for (size_t i = 0; i < n; i++)
		if (g[i] != (char)(i % 241 + 1)) { printf("FAIL: pattern byte %zu of the grows-down area\n", i); return 1; }
	for (char *p = g - 4096; p >= g - 16384; p -= 4096)
		if (*p != 7) { printf("FAIL: grown page %p of the grows-down area\n", (void *)p); return 1; }
	printf("PASS\n");
	return 0;
}
