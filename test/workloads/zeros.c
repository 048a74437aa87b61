// build:
// zeros: 64 MiB of anonymous memory written with zeros (so the pages are
// really there) and 1 MiB of pattern. The image must not carry the zero
// pages; after restart the memory must read back the same.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	size_t zn = 64 << 20, pn = 1 << 20;
	char *z = mmap(NULL, zn, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *p = mmap(NULL, pn, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(z, 1, zn);
	memset(z, 0, zn);
	for (size_t i = 0; i < pn; i++) p[i] = (char)(i % 251 + 1);
	printf("READY\n");
	while (!verify) usleep(10000);
	for (size_t i = 0; i < zn; i++)
		if (z[i] != 0) { printf("FAIL: zero memory byte %zu is %d\n", i, z[i]); return 1; }
	for (size_t i = 0; i < pn; i++)
		if (p[i] != (char)(i % 251 + 1)) { printf("FAIL: pattern byte %zu\n", i); return 1; }
	printf("PASS\n");
	return 0;
}
