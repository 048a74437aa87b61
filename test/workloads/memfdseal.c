// build:
/*
 * memfdseal.c - memfd seals across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up:
 *  - "open": made with MFD_ALLOW_SEALING, no seal yet (a program that
 *    seals it later, as a Wayland client does before it sends it);
 *  - "fixed": 3 pages of data, sealed against shrinking and growing, and
 *    against more seals (F_SEAL_SEAL), mapped shared read-write;
 *  - "frozen": 1 page of data, sealed against writing (F_SEAL_WRITE),
 *    not mapped;
 *  - "plain": made without MFD_ALLOW_SEALING (F_SEAL_SEAL from the start).
 * After the checkpoint: each has exactly the seals it had; "open" still
 * takes a seal; "fixed" refuses to grow or shrink, keeps its data and its
 * mapping writes through; "frozen" refuses writes and keeps its data.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "report.h"

static unsigned char pat(long i, int k) { return (unsigned char)(i * 13 + k); }

static int make(const char *name, unsigned flags, long size, int k)
{
	int fd = memfd_create(name, flags);
	if (fd < 0 || ftruncate(fd, size))
		die(name);
	for (long i = 0; i < size; i++) {
		unsigned char b = pat(i, k);
		if (pwrite(fd, &b, 1, i) != 1)
			die(name);
	}
	return fd;
}

static void check_data(const char *name, int fd, long size, int k)
{
	for (long i = 0; i < size; i += 511) {
		unsigned char b;
		if (pread(fd, &b, 1, i) != 1 || b != pat(i, k)) {
			fail("%s: byte %ld differs", name, i);
			return;
		}
	}
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	int open_ = memfd_create("open", MFD_ALLOW_SEALING);
	int fixed = make("fixed", MFD_ALLOW_SEALING, 3 * 4096, 1);
	int frozen = make("frozen", MFD_ALLOW_SEALING, 4096, 2);
	int plain = memfd_create("plain", 0);
	if (open_ < 0 || plain < 0)
		die("memfd_create");
	char *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fixed, 0);
	if (m == MAP_FAILED)
		die("mmap fixed");
	if (fcntl(fixed, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) || fcntl(frozen, F_ADD_SEALS, F_SEAL_WRITE))
		die("seal");
	int want[4] = {0, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, F_SEAL_WRITE, F_SEAL_SEAL};
	int fds[4] = {open_, fixed, frozen, plain};
	const char *names[4] = {"open", "fixed", "frozen", "plain"};

	printf("READY\n");
	while (!got_usr2)
		pause();

	for (int i = 0; i < 4; i++) {
		int got = fcntl(fds[i], F_GET_SEALS);
		if (got != want[i])
			fail("%s: seals %#x, want %#x", names[i], got, want[i]);
	}
	if (fcntl(open_, F_ADD_SEALS, F_SEAL_GROW) || fcntl(open_, F_GET_SEALS) != F_SEAL_GROW)
		fail("open: takes no seal any more");
	if (ftruncate(fixed, 4 * 4096) == 0 || ftruncate(fixed, 4096) == 0)
		fail("fixed: grows or shrinks despite its seals");
	check_data("fixed", fixed, 3 * 4096, 1);
	m[100] = 'M';
	unsigned char b;
	if (pread(fixed, &b, 1, 100) != 1 || b != 'M')
		fail("fixed: a write through the mapping does not reach it");
	if (pwrite(frozen, "x", 1, 0) == 1)
		fail("frozen: takes writes despite F_SEAL_WRITE");
	check_data("frozen", frozen, 4096, 2);
	return report();
}
