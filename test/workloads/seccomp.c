// build: -pthread
/*
 * seccomp.c - seccomp filters survive a checkpoint, in every thread.
 *
 * The process sets no_new_privs and installs two filters: the first makes
 * mkdir/mkdirat fail with EACCES, the second (with SECCOMP_FILTER_FLAG_LOG)
 * makes getpriority and prctl fail with ENOTSUP; everything else is
 * allowed. ckpt injects prctl calls at checkpoint and restart: the filters
 * must not see them, nor be left out of the restored process. Then it
 * starts a second thread. Protocol: READY, SIGUSR2; then both threads
 * must still be filtered (and nothing else), /proc/self/status must show
 * "Seccomp: 2" and two filters; PASS (exit 0) or "FAIL: ..." (exit 1).
 */
#define _GNU_SOURCE
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "report.h"

/* install adds a filter failing syscalls a and b with err. */
static int install(int a, int b, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, a, 1, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, b, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static const char *dir = "seccomp-probe";

/* check fails unless this thread is filtered as set up. */
static void check(const char *who)
{
	errno = 0;
	if (mkdir(dir, 0700) == 0) {
		rmdir(dir);
		fail("%s: mkdir succeeded", who);
	} else if (errno != EACCES)
		fail("%s: mkdir: %s, want EACCES", who, strerror(errno));
	errno = 0;
	if (getpriority(PRIO_PROCESS, 0) != -1 || errno != ENOTSUP)
		fail("%s: getpriority: %s, want ENOTSUP", who, strerror(errno));
	errno = 0;
	if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != -1 || errno != ENOTSUP)
		fail("%s: prctl: %s, want ENOTSUP", who, strerror(errno));
	if (getpid() <= 0 || access(".", F_OK))
		fail("%s: an allowed call failed: %s", who, strerror(errno));
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go, done;

static void *thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	while (!go)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	check("second thread");
	pthread_mutex_lock(&mu);
	done = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	return NULL;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("no_new_privs");
	if (install(SYS_mkdir, SYS_mkdirat, EACCES, 0))
		die("first filter");
	if (install(SYS_getpriority, SYS_prctl, ENOTSUP, SECCOMP_FILTER_FLAG_LOG))
		die("second filter");
	pthread_t t;
	if (pthread_create(&t, NULL, thread, NULL))
		die("pthread_create");
	check("before the checkpoint");
	if (failbuf[0])
		return report();

	printf("READY\n");
	while (!got_usr2)
		pause();

	check("main thread");
	pthread_mutex_lock(&mu);
	go = 1;
	pthread_cond_broadcast(&cv);
	while (!done)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	pthread_join(t, NULL);

	FILE *st = fopen("/proc/self/status", "r");
	char line[256];
	int mode = -1, filters = -1;
	while (st && fgets(line, sizeof(line), st)) {
		sscanf(line, "Seccomp: %d", &mode);
		sscanf(line, "Seccomp_filters: %d", &filters);
	}
	if (st)
		fclose(st);
	if (mode != 2 || filters != 2)
		fail("status: Seccomp %d with %d filters, want 2 with 2", mode, filters);
	return report();
}
