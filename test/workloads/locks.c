// build:
/*
 * locks.c - file locks held across a checkpoint.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line. It runs in a
 * directory of its own.
 *
 * Set up:
 *  - "flock-ex": an exclusive flock (and a dup of its descriptor);
 *  - "flock-sh": a shared flock;
 *  - "posix": POSIX (fcntl) locks, a write lock on bytes 10-29 and a read
 *    lock from byte 100 to the end, through one descriptor; a second
 *    descriptor of the file, opened apart, holds none;
 *  - "ofd": open file description locks, a write lock on bytes 0-4 and a
 *    read lock on bytes 50-59;
 *  - the directory itself: an exclusive flock;
 *  - a child waits (blocked in flock, then in F_SETLKW) for the flock on
 *    "flock-ex" and for the POSIX write lock on "posix".
 * After the checkpoint another child (another process, with descriptors
 * of its own) checks each lock from outside: what conflicts and what does
 * not, and that the POSIX locks are its parent's. Then the parent lets
 * go of the two locks the waiter waits for, which must get each in turn.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "report.h"

static void on_alarm(int sig) { (void)sig; }

static int open_or_die(const char *path, int flags)
{
	int fd = open(path, flags, 0644);
	if (fd < 0)
		die(path);
	return fd;
}

static void setlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	if (fcntl(fd, cmd, &fl))
		die("fcntl lock");
}

/* getlk asks whether a lock of type on [start, start+len) would conflict,
 * and returns the conflicting lock (l_type F_UNLCK if none). */
static struct flock getlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	if (fcntl(fd, cmd, &fl))
		fail("F_GETLK: %s", strerror(errno));
	return fl;
}

static const char *typename(short t)
{
	return t == F_WRLCK ? "write" : t == F_RDLCK ? "read" : "none";
}

static void want(const char *what, struct flock got, short type, pid_t pid, off_t start, off_t len)
{
	if (got.l_type != type)
		fail("%s: conflicting lock %s, want %s", what, typename(got.l_type), typename(type));
	else if (type != F_UNLCK && (got.l_pid != pid || got.l_start != start || got.l_len != len))
		fail("%s: held by %d on %lld+%lld, want %d on %lld+%lld", what, got.l_pid,
		     (long long)got.l_start, (long long)got.l_len, pid, (long long)start, (long long)len);
}

static void want_flock(const char *path, int how, int ok)
{
	int fd = open_or_die(path, O_RDONLY);
	int r = flock(fd, how | LOCK_NB);
	if (ok && r)
		fail("%s: flock %s refused: %s", path, how == LOCK_EX ? "LOCK_EX" : "LOCK_SH", strerror(errno));
	if (!ok && (r == 0 || errno != EWOULDBLOCK))
		fail("%s: flock %s %s, want EWOULDBLOCK", path, how == LOCK_EX ? "LOCK_EX" : "LOCK_SH", r ? strerror(errno) : "granted");
	close(fd);
}

/* check runs in a child: another process, with descriptors of its own. */
static void check(pid_t parent)
{
	want_flock("flock-ex", LOCK_SH, 0);
	want_flock("flock-sh", LOCK_SH, 1);
	want_flock("flock-sh", LOCK_EX, 0);
	want_flock(".", LOCK_EX, 0);
	int p = open_or_die("posix", O_RDWR);
	want("posix write 10-29", getlk(p, F_GETLK, F_RDLCK, 10, 20), F_WRLCK, parent, 10, 20);
	want("posix read 100-", getlk(p, F_GETLK, F_WRLCK, 150, 10), F_RDLCK, parent, 100, 0);
	want("posix free 30-99", getlk(p, F_GETLK, F_WRLCK, 30, 70), F_UNLCK, 0, 0, 0);
	want("posix shared 100-", getlk(p, F_GETLK, F_RDLCK, 100, 0), F_UNLCK, 0, 0, 0);
	int o = open_or_die("ofd", O_RDWR);
	want("ofd write 0-4", getlk(o, F_OFD_GETLK, F_RDLCK, 0, 5), F_WRLCK, -1, 0, 5);
	want("ofd read 50-59", getlk(o, F_OFD_GETLK, F_WRLCK, 50, 10), F_RDLCK, -1, 50, 10);
	want("ofd shared 50-59", getlk(o, F_OFD_GETLK, F_RDLCK, 50, 10), F_UNLCK, 0, 0, 0);
	want("ofd free 5-49", getlk(o, F_OFD_GETLK, F_WRLCK, 5, 45), F_UNLCK, 0, 0, 0);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));

	int ex = open_or_die("flock-ex", O_RDWR | O_CREAT), ex2;
	if (flock(ex, LOCK_EX) || (ex2 = dup(ex)) < 0)
		die("flock-ex");
	int sh = open_or_die("flock-sh", O_RDWR | O_CREAT);
	if (flock(sh, LOCK_SH))
		die("flock-sh");
	int dir = open_or_die(".", O_RDONLY | O_DIRECTORY);
	if (flock(dir, LOCK_EX))
		die("flock .");
	int p = open_or_die("posix", O_RDWR | O_CREAT);
	setlk(p, F_SETLK, F_WRLCK, 10, 20);
	setlk(p, F_SETLK, F_RDLCK, 100, 0);
	open_or_die("posix", O_RDONLY); /* a second description, no locks */
	int o = open_or_die("ofd", O_RDWR | O_CREAT);
	setlk(o, F_OFD_SETLK, F_WRLCK, 0, 5);
	setlk(o, F_OFD_SETLK, F_RDLCK, 50, 10);

	int wpipe[2];
	if (pipe(wpipe))
		die("pipe");
	pid_t waiter = fork();
	if (waiter < 0)
		die("fork");
	if (waiter == 0) {
		/* Its copies of the flock's description would keep it locked. */
		close(ex);
		close(ex2);
		close(wpipe[0]);
		int w = open_or_die("flock-ex", O_RDWR);
		if (flock(w, LOCK_EX) || write(wpipe[1], "F", 1) != 1)
			_exit(1);
		int wp = open_or_die("posix", O_RDWR);
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20};
		if (fcntl(wp, F_SETLKW, &fl) || write(wpipe[1], "P", 1) != 1)
			_exit(1);
		_exit(0);
	}
	close(wpipe[1]);

	printf("READY\n");
	while (!got_usr2)
		pause();

	int pfd[2];
	if (pipe(pfd))
		die("pipe");
	pid_t parent = getpid(), child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(pfd[0]);
		check(parent);
		pass_failures(pfd[1]);
	}
	close(pfd[1]);
	take_failures(pfd[0]);
	waitpid(child, NULL, 0);

	/* The waiter gets the flock once both descriptors of its description
	 * are closed, then the POSIX lock once it is let go. */
	char c;
	close(ex);
	close(ex2);
	sa.sa_handler = on_alarm; /* without SA_RESTART: read fails with EINTR */
	if (sigaction(SIGALRM, &sa, NULL))
		die("sigaction");
	alarm(5);
	if (read(wpipe[0], &c, 1) != 1 || c != 'F')
		fail("the waiter did not get the flock on flock-ex once it was free");
	setlk(p, F_SETLK, F_UNLCK, 10, 20);
	if (read(wpipe[0], &c, 1) != 1 || c != 'P')
		fail("the waiter did not get the POSIX lock on posix once it was free");
	alarm(0);
	int st;
	if (waitpid(waiter, &st, 0) != waiter || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("the waiter ended with status %#x", st);
	return report();
}
