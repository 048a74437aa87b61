// build:
/*
 * deleted.c - files unlinked while open across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line. It runs in a
 * directory of its own.
 *
 * Set up:
 *  - the program runs from a copy of itself that it deleted: its
 *    executable and the areas it maps are a deleted file;
 *  - "scratch": 100000 patterned bytes, opened read-write (fd a, offset
 *    5000, and its dup b) and read-only (fd c, offset 10), then unlinked;
 *    also mapped shared, "MAPPED" written at 200 through the mapping;
 *  - "priv": two pages of 'P', mapped privately, unlinked; the first page
 *    written through the mapping, the second not;
 *  - an O_TMPFILE file (never had a name), mode 0640, "tmp data";
 *  - "reused": opened, unlinked, and a new file made under the same name
 *    with other content;
 *  - "big": a sparse file of 40 MiB + 123 bytes (bigger than a metadata
 *    record may be) with data only in [0, 1 MiB + 77) and [39 MiB + 5,
 *    the end), opened read-write at offset 777, and mapped shared at
 *    39 MiB; unlinked.
 * After the checkpoint: contents, offsets, link counts of 0, the mode;
 * a and b share their offset, and a and c their inode (a write through a
 * or the shared mapping shows through c); /proc names them "(deleted)",
 * the executable too; the private mapping keeps its written page and the
 * file's other; the new "reused" file is untouched; "big" has its size,
 * offset, data, zeros in between, and holes there (under 20 MiB of
 * blocks), and its mapping shows the data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "report.h"


#define N 100000
static unsigned char pattern(size_t i) { return (unsigned char)(i * 31 + i / 977); }

/* copy this program to ./deleted-copy and run that, which deletes it */
static void run_from_deleted_copy(char **argv)
{
	static char bin[8 << 20];
	int in = open("/proc/self/exe", O_RDONLY), out = open("deleted-copy", O_WRONLY | O_CREAT | O_TRUNC, 0755);
	ssize_t n = in < 0 ? -1 : read(in, bin, sizeof(bin));
	if (n <= 0 || out < 0 || write(out, bin, n) != n || close(out))
		die("copy the program");
	close(in);
	char *args[] = {"deleted-copy", "copy", NULL};
	execv("./deleted-copy", args);
	(void)argv;
	die("exec the copy");
}

static char linkbuf[256], proc[64];

#define BIG ((40L << 20) + 123)
#define BIG_A ((1L << 20) + 77) /* first data region: [0, BIG_A) */
#define BIG_B ((39L << 20) + 5) /* second: [BIG_B, BIG) */
static unsigned char big_pattern(long i) { return (unsigned char)(i * 7 + i / 4093 + 1); }

/* big_check reads back a data region of "big" through fd */
static int big_check(int fd, long from, long to)
{
	static unsigned char chunk[1 << 16];
	for (long off = from; off < to; off += sizeof(chunk)) {
		long n = to - off < (long)sizeof(chunk) ? to - off : (long)sizeof(chunk);
		if (pread(fd, chunk, n, off) != n)
			return -1;
		for (long i = 0; i < n; i++)
			if (chunk[i] != big_pattern(off + i))
				return -1;
	}
	return 0;
}

/* big_fill writes a data region of "big" through fd */
static void big_fill(int fd, long from, long to)
{
	static unsigned char chunk[1 << 16];
	for (long off = from; off < to; off += sizeof(chunk)) {
		long n = to - off < (long)sizeof(chunk) ? to - off : (long)sizeof(chunk);
		for (long i = 0; i < n; i++)
			chunk[i] = big_pattern(off + i);
		if (pwrite(fd, chunk, n, off) != n)
			die("fill big");
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2 || strcmp(argv[1], "copy"))
		run_from_deleted_copy(argv);
	if (unlink("deleted-copy"))
		die("unlink the copy");
	catch_usr2();

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
	char *shared = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
	if (shared == MAP_FAILED)
		die("mmap scratch");
	memcpy(shared + 200, "MAPPED", 6);

	int p = open("priv", O_RDWR | O_CREAT | O_EXCL, 0600);
	static char pp[8192];
	memset(pp, 'P', sizeof(pp));
	if (p < 0 || write(p, pp, sizeof(pp)) != sizeof(pp) || unlink("priv"))
		die("priv");
	char *priv = mmap(NULL, sizeof(pp), PROT_READ | PROT_WRITE, MAP_PRIVATE, p, 0);
	if (priv == MAP_FAILED)
		die("mmap priv");
	close(p);
	memcpy(priv, "written", 7);

	int t = open(".", O_TMPFILE | O_RDWR, 0640);
	if (t < 0 || write(t, "tmp data", 8) != 8)
		die("O_TMPFILE");

	int r = open("reused", O_RDWR | O_CREAT | O_EXCL, 0600);
	if (r < 0 || write(r, "old", 3) != 3 || unlink("reused"))
		die("reused");
	int nr = open("reused", O_RDWR | O_CREAT | O_EXCL, 0600);
	if (nr < 0 || write(nr, "new content", 11) != 11 || close(nr))
		die("new reused");

	int g = open("big", O_RDWR | O_CREAT | O_EXCL, 0600);
	if (g < 0)
		die("big");
	big_fill(g, 0, BIG_A);
	big_fill(g, BIG_B, BIG);
	char *bigmap = mmap(NULL, 4096, PROT_READ, MAP_SHARED, g, 39L << 20);
	if (bigmap == MAP_FAILED || unlink("big") || lseek(g, 777, SEEK_SET) != 777)
		die("big: map or unlink");

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
	memcpy(buf + 200, "MAPPED", 6);
	if (pread(c, got, N, 0) != N || memcmp(got, buf, N))
		fail("scratch: content differs");
	if (memcmp(shared + 200, "MAPPED", 6) || memcmp(shared, buf, 200))
		fail("scratch: the shared mapping lost its content");
	memcpy(shared + 300, "again", 5);
	if (pread(c, got, 5, 300) != 5 || memcmp(got, "again", 5))
		fail("scratch: a write through the shared mapping does not reach the file");
	if (memcmp(priv, "written", 7) || priv[7] != 'P' || priv[4096] != 'P' || priv[8191] != 'P')
		fail("priv: the private mapping lost its written page or the file's");
	ssize_t el = readlink("/proc/self/exe", linkbuf, sizeof(linkbuf) - 1);
	linkbuf[el > 0 ? el : 0] = 0;
	if (el < 0 || !strstr(linkbuf, "/deleted-copy (deleted)"))
		fail("the executable is %s, want the deleted copy", linkbuf);
	if (pwrite(a, "XYZ", 3, 100) != 3 || pread(c, got, 3, 100) != 3 || memcmp(got, "XYZ", 3))
		fail("scratch: a write through a does not show through c (not one inode)");
	if ((fcntl(c, F_GETFL) & O_ACCMODE) != O_RDONLY)
		fail("scratch: c is not read-only");
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", a);
	ssize_t ll = readlink(proc, linkbuf, sizeof(linkbuf) - 1);
	linkbuf[ll > 0 ? ll : 0] = 0;
	if (ll < 0 || !strstr(linkbuf, "/scratch (deleted)"))
		fail("scratch: /proc names it %s", linkbuf);

	char tb[16];
	if (fstat(t, &st) || st.st_nlink != 0 || (st.st_mode & 0777) != 0640 || pread(t, tb, sizeof(tb), 0) != 8 || memcmp(tb, "tmp data", 8))
		fail("O_TMPFILE file: %ld links, mode %o, or content lost", (long)st.st_nlink, st.st_mode & 0777);

	if (pread(r, tb, sizeof(tb), 0) != 3 || memcmp(tb, "old", 3))
		fail("reused: the deleted file's content is not \"old\"");
	int nr2 = open("reused", O_RDONLY);
	if (nr2 < 0 || read(nr2, tb, sizeof(tb)) != 11 || memcmp(tb, "new content", 11))
		fail("reused: the new file was touched");

	static unsigned char zeros[1 << 16], hole[1 << 16];
	if (fstat(g, &st) || st.st_nlink != 0 || st.st_size != BIG)
		fail("big: %ld links, %ld bytes, want 0 and %ld", (long)st.st_nlink, (long)st.st_size, BIG);
	else if (lseek(g, 0, SEEK_CUR) != 777)
		fail("big: offset %ld, want 777", (long)lseek(g, 0, SEEK_CUR));
	else if (big_check(g, 0, BIG_A) || big_check(g, BIG_B, BIG))
		fail("big: data differs");
	else if (pread(g, hole, sizeof(hole), 20L << 20) != sizeof(hole) || memcmp(hole, zeros, sizeof(hole)) ||
		 pread(g, hole, 5, 39L << 20) != 5 || memcmp(hole, zeros, 5))
		fail("big: the hole is not zeros");
	else if (st.st_blocks * 512 >= (20L << 20))
		fail("big: %ld bytes of blocks, the holes were filled", (long)st.st_blocks * 512);
	else if (memcmp(bigmap, zeros, 5) || bigmap[5] != big_pattern(BIG_B) || bigmap[4095] != big_pattern((39L << 20) + 4095))
		fail("big: the mapping does not show the data");

	return report();
}
