// build:
/*
 * files.c - file descriptor and fs/process attribute state across a checkpoint.
 *
 * Protocol: prints READY once set up, then sleeps in 10 ms steps until
 * SIGUSR2; on SIGUSR2 it prints PASS (exit 0) or "FAIL: ..." (exit 1) as its
 * last line.  All differences are listed, the first one first.
 *
 * Set up (cwd = the harness's fresh temp dir):
 *  - data.txt: 4096 bytes, byte i = (i*7+3)&0xff; fd O_RDONLY, 1000 bytes read
 *  - a dup() of that fd (shares the offset)
 *  - log.txt: O_WRONLY|O_CREAT|O_APPEND, "first\n" written
 *  - a file whose name is not UTF-8 ("caf\xe9-\xff"): O_RDWR, 5 bytes written
 *  - "." opened O_RDONLY|O_DIRECTORY
 *  - /dev/null O_WRONLY, /dev/zero O_RDONLY, /dev/urandom O_RDONLY|O_CLOEXEC
 *  - mkdir sub, chdir sub; umask 027; PR_SET_NAME "wl-files";
 *    RLIMIT_NOFILE soft = 512 (hard unchanged)
 *
 * To see the FAIL path without changing the code, append to log.txt from
 * outside (echo x >> DIR/log.txt) before sending SIGUSR2.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "report.h"

#define DATA_SIZE 4096
static unsigned char data_byte(int i) { return (unsigned char)((i * 7 + 3) & 0xff); }


static int fd_data, fd_dup, fd_log, fd_dir, fd_null, fd_zero, fd_urandom, fd_odd;
// ODD_NAME is not UTF-8: Linux names are bytes, and so are they in an image.
#define ODD_NAME "caf\xe9-\xff"
static rlim_t nofile_hard;
static char initial_fds[64];

static void check_fl(const char *name, int fd, int want)
{
	const int mask = O_ACCMODE | O_APPEND | O_NONBLOCK | O_SYNC | O_DSYNC;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		fail("%s fd %d F_GETFL: %s", name, fd, strerror(errno));
	else if ((fl & mask) != want)
		fail("%s fd %d F_GETFL (masked %#o) expected %#o actual %#o", name, fd, mask, want,
		     fl & mask);
}

static void check_cloexec(const char *name, int fd, int want)
{
	int fdfl = fcntl(fd, F_GETFD);
	if (fdfl < 0)
		fail("%s fd %d F_GETFD: %s", name, fd, strerror(errno));
	else if ((fdfl & FD_CLOEXEC) != want)
		fail("%s fd %d FD_CLOEXEC expected %d actual %d", name, fd, want, fdfl & FD_CLOEXEC);
}

static void check_chardev(const char *name, int fd, unsigned maj, unsigned min)
{
	struct stat st;
	if (fstat(fd, &st))
		fail("%s fd %d fstat: %s", name, fd, strerror(errno));
	else if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != maj || minor(st.st_rdev) != min)
		fail("%s fd %d expected chardev %u:%u actual mode %#o rdev %u:%u", name, fd, maj, min,
		     (unsigned)st.st_mode, major(st.st_rdev), minor(st.st_rdev));
}

static void check_same_file(const char *name, int fd, const char *path)
{
	struct stat a, b;
	if (fstat(fd, &a))
		fail("%s fd %d fstat: %s", name, fd, strerror(errno));
	else if (stat(path, &b))
		fail("stat %s: %s", path, strerror(errno));
	else if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		fail("%s fd %d expected inode %lu (%s) actual %lu", name, fd, (unsigned long)b.st_ino,
		     path, (unsigned long)a.st_ino);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);

	catch_usr2();

	for (int fd = 0; fd < 64; fd++)
		initial_fds[fd] = fcntl(fd, F_GETFD) >= 0;

	/* data.txt with known content */
	unsigned char buf[DATA_SIZE];
	for (int i = 0; i < DATA_SIZE; i++)
		buf[i] = data_byte(i);
	int w = open("data.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (w < 0)
		die("create data.txt");
	if (write(w, buf, DATA_SIZE) != DATA_SIZE)
		die("write data.txt");
	close(w);

	fd_data = open("data.txt", O_RDONLY);
	if (fd_data < 0)
		die("open data.txt");
	if (read(fd_data, buf, 1000) != 1000)
		die("read data.txt");
	fd_log = open("log.txt", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd_log < 0)
		die("open log.txt");
	if (write(fd_log, "first\n", 6) != 6)
		die("write log.txt");
	fd_dir = open(".", O_RDONLY | O_DIRECTORY);
	if (fd_dir < 0)
		die("open .");
	fd_null = open("/dev/null", O_WRONLY);
	if (fd_null < 0)
		die("open /dev/null");
	fd_zero = open("/dev/zero", O_RDONLY);
	if (fd_zero < 0)
		die("open /dev/zero");
	fd_urandom = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd_urandom < 0)
		die("open /dev/urandom");
	fd_dup = dup(fd_data);
	if (fd_dup < 0)
		die("dup");
	fd_odd = open(ODD_NAME, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd_odd < 0)
		die("open " ODD_NAME);
	if (write(fd_odd, "12345", 5) != 5)
		die("write " ODD_NAME);

	if (mkdir("sub", 0755))
		die("mkdir sub");
	if (chdir("sub"))
		die("chdir sub");
	umask(027);
	if (prctl(PR_SET_NAME, "wl-files", 0, 0, 0))
		die("PR_SET_NAME");
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl))
		die("getrlimit");
	nofile_hard = rl.rlim_max;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 512) {
		errno = EINVAL;
		die("RLIMIT_NOFILE hard limit below 512");
	}
	rl.rlim_cur = 512;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		die("setrlimit");

	printf("files: data %d dup %d log %d dir %d null %d zero %d urandom %d\n", fd_data, fd_dup,
	       fd_log, fd_dir, fd_null, fd_zero, fd_urandom);
	printf("READY\n");
	fflush(stdout);

	while (!got_usr2) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}

	/* --- verification --- */

	/* shared offset of data.txt and its dup */
	off_t o1 = lseek(fd_data, 0, SEEK_CUR), o2 = lseek(fd_dup, 0, SEEK_CUR);
	if (o1 != 1000)
		fail("data.txt fd %d offset expected 1000 actual %lld", fd_data, (long long)o1);
	if (o2 != 1000)
		fail("data.txt dup fd %d offset expected 1000 actual %lld", fd_dup, (long long)o2);
	unsigned char rb[10];
	ssize_t n = read(fd_dup, rb, 10);
	if (n != 10)
		fail("read 10 from dup fd %d returned %zd (%s)", fd_dup, n, n < 0 ? strerror(errno) : "");
	else
		for (int i = 0; i < 10; i++)
			if (rb[i] != data_byte(o2 + i)) {
				fail("dup read byte at %lld expected %#x actual %#x",
				     (long long)(o2 + i), data_byte(o2 + i), rb[i]);
				break;
			}
	o1 = lseek(fd_data, 0, SEEK_CUR);
	if (o1 != 1010)
		fail("data.txt fd %d offset after reading 10 via dup expected 1010 actual %lld "
		     "(description not shared?)", fd_data, (long long)o1);
	/* the file content itself */
	unsigned char all[DATA_SIZE];
	n = pread(fd_data, all, DATA_SIZE, 0);
	if (n != DATA_SIZE)
		fail("pread data.txt returned %zd expected %d", n, DATA_SIZE);
	else
		for (int i = 0; i < DATA_SIZE; i++)
			if (all[i] != data_byte(i)) {
				fail("data.txt byte %d expected %#x actual %#x", i, data_byte(i), all[i]);
				break;
			}
	check_same_file("data.txt", fd_data, "../data.txt");
	check_same_file("data.txt dup", fd_dup, "../data.txt");
	check_same_file("log.txt", fd_log, "../log.txt");
	check_same_file("non-UTF-8 name", fd_odd, "../" ODD_NAME);
	if (lseek(fd_odd, 0, SEEK_CUR) != 5)
		fail("non-UTF-8 name fd %d offset expected 5 actual %lld", fd_odd, (long long)lseek(fd_odd, 0, SEEK_CUR));
	check_fl("non-UTF-8 name", fd_odd, O_RDWR);

	/* open flags */
	check_fl("data.txt", fd_data, O_RDONLY);
	check_fl("data.txt dup", fd_dup, O_RDONLY);
	check_fl("log.txt", fd_log, O_WRONLY | O_APPEND);
	check_fl("dir", fd_dir, O_RDONLY);
	check_fl("/dev/null", fd_null, O_WRONLY);
	check_fl("/dev/zero", fd_zero, O_RDONLY);
	check_fl("/dev/urandom", fd_urandom, O_RDONLY);

	/* close-on-exec only on urandom */
	check_cloexec("data.txt", fd_data, 0);
	check_cloexec("data.txt dup", fd_dup, 0);
	check_cloexec("log.txt", fd_log, 0);
	check_cloexec("dir", fd_dir, 0);
	check_cloexec("/dev/null", fd_null, 0);
	check_cloexec("/dev/zero", fd_zero, 0);
	check_cloexec("/dev/urandom", fd_urandom, FD_CLOEXEC);

	/* the device fds refer to the right devices */
	check_chardev("/dev/null", fd_null, 1, 3);
	check_chardev("/dev/zero", fd_zero, 1, 5);
	check_chardev("/dev/urandom", fd_urandom, 1, 9);

	/* no fds other than those open at start (0,1,2) and ours; none lost */
	for (int fd = 0; fd < 64; fd++) {
		if (fd == fd_data || fd == fd_dup || fd == fd_log || fd == fd_dir || fd == fd_null ||
		    fd == fd_zero || fd == fd_urandom || fd == fd_odd)
			continue;
		int open_now = fcntl(fd, F_GETFD) >= 0;
		if (initial_fds[fd] && !open_now)
			fail("fd %d (open at start) is closed", fd);
		if (!initial_fds[fd] && open_now) {
			char p[64], t[PATH_MAX];
			snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
			ssize_t tl = readlink(p, t, sizeof(t) - 1);
			t[tl > 0 ? tl : 0] = 0;
			fail("unexpected open fd %d -> %s", fd, t);
		}
	}

	/* append to log.txt, read back through a fresh open */
	n = write(fd_log, "second\n", 7);
	if (n != 7)
		fail("write log.txt returned %zd (%s)", n, n < 0 ? strerror(errno) : "");
	{
		char lb[256];
		int f = open("../log.txt", O_RDONLY);
		if (f < 0)
			fail("open ../log.txt: %s", strerror(errno));
		else {
			ssize_t ln = read(f, lb, sizeof(lb) - 1);
			lb[ln > 0 ? ln : 0] = 0;
			close(f);
			if (strcmp(lb, "first\nsecond\n") != 0) {
				char esc[512];
				size_t e = 0;
				for (ssize_t i = 0; i < ln && e < sizeof(esc) - 3; i++) {
					if (lb[i] == '\n') {
						esc[e++] = '\\';
						esc[e++] = 'n';
					} else
						esc[e++] = lb[i];
				}
				esc[e] = 0;
				fail("log.txt content expected \"first\\nsecond\\n\" actual \"%s\"", esc);
			}
		}
	}

	/* directory fd */
	struct stat ds, ps;
	if (fstat(fd_dir, &ds))
		fail("fstat dir fd %d: %s", fd_dir, strerror(errno));
	else if (stat("..", &ps))
		fail("stat ..: %s", strerror(errno));
	else {
		if (!S_ISDIR(ds.st_mode))
			fail("dir fd %d is not a directory (mode %#o)", fd_dir, (unsigned)ds.st_mode);
		if (ds.st_ino != ps.st_ino || ds.st_dev != ps.st_dev)
			fail("dir fd %d inode expected %lu (stat ..) actual %lu", fd_dir,
			     (unsigned long)ps.st_ino, (unsigned long)ds.st_ino);
	}
	/* and it is usable: "sub" exists relative to it */
	struct stat ss;
	if (fstatat(fd_dir, "sub", &ss, 0) || !S_ISDIR(ss.st_mode))
		fail("fstatat(dir fd, \"sub\") failed or not a directory");
	else {
		struct stat dot;
		if (stat(".", &dot) == 0 && (dot.st_ino != ss.st_ino || dot.st_dev != ss.st_dev))
			fail("cwd inode %lu != dirfd/sub inode %lu", (unsigned long)dot.st_ino,
			     (unsigned long)ss.st_ino);
	}

	/* /dev/zero */
	unsigned char z[4096];
	memset(z, 0x5a, sizeof(z));
	n = read(fd_zero, z, sizeof(z));
	if (n != (ssize_t)sizeof(z))
		fail("read /dev/zero returned %zd", n);
	else
		for (size_t i = 0; i < sizeof(z); i++)
			if (z[i]) {
				fail("/dev/zero byte %zu expected 0 actual %#x", i, z[i]);
				break;
			}

	/* /dev/urandom is readable */
	n = read(fd_urandom, z, 64);
	if (n != 64)
		fail("read /dev/urandom returned %zd", n);

	/* cwd */
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)))
		fail("getcwd: %s", strerror(errno));
	else {
		size_t l = strlen(cwd);
		if (l < 4 || strcmp(cwd + l - 4, "/sub") != 0)
			fail("getcwd expected .../sub actual %s", cwd);
	}

	/* umask */
	mode_t um = umask(0);
	umask(um);
	if (um != 027)
		fail("umask expected 027 actual %03o", (unsigned)um);

	/* name */
	char name[17] = {0};
	if (prctl(PR_GET_NAME, name, 0, 0, 0))
		fail("PR_GET_NAME: %s", strerror(errno));
	else if (strcmp(name, "wl-files") != 0)
		fail("PR_GET_NAME expected \"wl-files\" actual \"%s\"", name);

	/* rlimit */
	struct rlimit rl2;
	if (getrlimit(RLIMIT_NOFILE, &rl2))
		fail("getrlimit: %s", strerror(errno));
	else {
		if (rl2.rlim_cur != 512)
			fail("RLIMIT_NOFILE soft expected 512 actual %llu",
			     (unsigned long long)rl2.rlim_cur);
		if (rl2.rlim_max != nofile_hard)
			fail("RLIMIT_NOFILE hard expected %llu actual %llu",
			     (unsigned long long)nofile_hard, (unsigned long long)rl2.rlim_max);
	}

	/* /dev/null */
	n = write(fd_null, "discard me\n", 11);
	if (n != 11)
		fail("write /dev/null returned %zd (%s)", n, n < 0 ? strerror(errno) : "");

	return report();
}
