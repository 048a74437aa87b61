// build:
/*
 * deleted.c - files unlinked while open across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line. It runs in a
 * directory of its own.
 *
 * Set up:
 *  - "scratch": 100000 patterned bytes, opened read-write (fd a, offset
 *    5000, and its dup b) and read-only (fd c, offset 10), then unlinked;
 *  - an O_TMPFILE file (never had a name), mode 0640, "tmp data";
 *  - "reused": opened, unlinked, and a new file made under the same name
 *    with other content.
 * After the checkpoint: contents, offsets, link counts of 0, the mode;
 * a and b share their offset, and a and c their inode (a write through a
 * shows through c); /proc names them "(deleted)"; the new "reused" file
 * is untouched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr2;
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

static char failbuf[8192];
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	size_t l = strlen(failbuf);
	if (l >= sizeof(failbuf) - 4)
		return;
	if (l)
		strcat(failbuf, "; ");
	l = strlen(failbuf);
	va_start(ap, fmt);
	vsnprintf(failbuf + l, sizeof(failbuf) - l, fmt, ap);
	va_end(ap);
}

static void die(const char *what)
{
	printf("FAIL: setup: %s: %s\n", what, strerror(errno));
	exit(1);
}

#define N 100000
static unsigned char pattern(size_t i) { return (unsigned char)(i * 31 + i / 977); }

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr2;
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction");

	static unsigned char buf[N];
	for (size_t i = 0; i < N; i++)
		buf[i] = pattern(i);
	int a = open("scratch", O_RDWR | O_CREAT | O_EXCL, 0600);
	if (a < 0 || write(a, buf, N) != N)
		die("scratch");
	int c = open("scratch", O_RDONLY);
	if (c < 0 || unlink("scratch") || lseek(a, 5000, SEEK_SET) != 5000 || lseek(c, 10, SEEK_SET) != 10)
		die("unlink scratch");
	int b = dup(a);

	int t = open(".", O_TMPFILE | O_RDWR, 0640);
	if (t < 0 || write(t, "tmp data", 8) != 8)
		die("O_TMPFILE");

	int r = open("reused", O_RDWR | O_CREAT | O_EXCL, 0600);
	if (r < 0 || write(r, "old", 3) != 3 || unlink("reused"))
		die("reused");
	int nr = open("reused", O_RDWR | O_CREAT | O_EXCL, 0600);
	if (nr < 0 || write(nr, "new content", 11) != 11 || close(nr))
		die("new reused");

	printf("READY\n");
	while (!got_usr2)
		pause();

	struct stat st;
	if (fstat(a, &st) || st.st_nlink != 0 || st.st_size != N)
		fail("scratch: %ld links, %ld bytes, want 0 and %d", (long)st.st_nlink, (long)st.st_size, N);
	if (lseek(a, 0, SEEK_CUR) != 5000 || lseek(c, 0, SEEK_CUR) != 10)
		fail("scratch: offsets %ld and %ld, want 5000 and 10", (long)lseek(a, 0, SEEK_CUR), (long)lseek(c, 0, SEEK_CUR));
	lseek(b, 6000, SEEK_SET);
	if (lseek(a, 0, SEEK_CUR) != 6000)
		fail("scratch: a and its dup no longer share an offset");
	static unsigned char got[N];
	if (pread(c, got, N, 0) != N || memcmp(got, buf, N))
		fail("scratch: content differs");
	if (pwrite(a, "XYZ", 3, 100) != 3 || pread(c, got, 3, 100) != 3 || memcmp(got, "XYZ", 3))
		fail("scratch: a write through a does not show through c (not one inode)");
	if ((fcntl(c, F_GETFL) & O_ACCMODE) != O_RDONLY)
		fail("scratch: c is not read-only");
	char link[256], proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", a);
	ssize_t ll = readlink(proc, link, sizeof(link) - 1);
	link[ll > 0 ? ll : 0] = 0;
	if (ll < 0 || !strstr(link, "/scratch (deleted)"))
		fail("scratch: /proc names it %s", link);

	char tb[16];
	if (fstat(t, &st) || st.st_nlink != 0 || (st.st_mode & 0777) != 0640 || pread(t, tb, sizeof(tb), 0) != 8 || memcmp(tb, "tmp data", 8))
		fail("O_TMPFILE file: %ld links, mode %o, or content lost", (long)st.st_nlink, st.st_mode & 0777);

	if (pread(r, tb, sizeof(tb), 0) != 3 || memcmp(tb, "old", 3))
		fail("reused: the deleted file's content is not \"old\"");
	int nr2 = open("reused", O_RDONLY);
	if (nr2 < 0 || read(nr2, tb, sizeof(tb)) != 11 || memcmp(tb, "new content", 11))
		fail("reused: the new file was touched");

	if (failbuf[0]) {
		printf("FAIL: %s\n", failbuf);
		return 1;
	}
	printf("PASS\n");
	return 0;
}
