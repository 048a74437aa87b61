// build:
// fifo: a named pipe with both ends open in one process (the read end
// non-blocking) and 100 unread bytes in it. On SIGUSR2 it reads them back
// and checks the FIFO still works both ways.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }
#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	unlink("fifo");
	if (mkfifo("fifo", 0600) != 0) { printf("FAIL: mkfifo: %s\n", strerror(errno)); return 1; }
	int r = open("fifo", O_RDONLY | O_NONBLOCK);
	int w = open("fifo", O_WRONLY);
	char buf[100];
	for (int i = 0; i < 100; i++) buf[i] = (char)(i * 3 + 1);
	write(w, buf, sizeof buf);
	printf("READY\n");
	while (!verify) usleep(10000);
	char got[200];
	CHECK(read(r, got, sizeof got) == 100, "read back %s", strerror(errno));
	CHECK(memcmp(got, buf, 100) == 0, "FIFO data differs");
	CHECK(read(r, got, 1) == -1 && errno == EAGAIN, "read end is no longer non-blocking");
	CHECK(!(fcntl(w, F_GETFL) & O_NONBLOCK), "write end became non-blocking");
	CHECK(write(w, "x", 1) == 1 && read(r, got, 1) == 1 && got[0] == 'x', "FIFO no longer carries data");
	printf("PASS\n");
	return 0;
}
