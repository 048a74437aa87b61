// build:
/*
 * caps.c - capability sets across a checkpoint (run as root).
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up:
 *  - the root process (uid 0) drops CAP_SYS_MODULE and CAP_SYS_BOOT from
 *    its bounding set, keeps CAP_CHOWN, CAP_KILL (to signal its child),
 *    CAP_NET_BIND_SERVICE and CAP_NET_RAW permitted, all but the last
 *    effective, CAP_NET_BIND_SERVICE inheritable and ambient (a
 *    container's root, a daemon that dropped what it does not need), and
 *    sets the securebits SECBIT_NOROOT (locked) and SECBIT_KEEP_CAPS;
 *  - a child becomes uid/gid 65534 keeping CAP_NET_BIND_SERVICE
 *    (permitted, effective, inheritable, ambient), as a service that may
 *    bind a low port without being root.
 * After the checkpoint each compares the five sets in /proc/self/status
 * with what they were, the root its securebits too; the child also binds port 80 somewhere free (its
 * capability at work) and reports to the root through a pipe.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "report.h"


static void setcaps(unsigned long long eff, unsigned long long prm, unsigned long long inh)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2] = {
		{.effective = (unsigned)eff, .permitted = (unsigned)prm, .inheritable = (unsigned)inh},
		{.effective = (unsigned)(eff >> 32), .permitted = (unsigned)(prm >> 32), .inheritable = (unsigned)(inh >> 32)},
	};
	if (syscall(SYS_capset, &h, d))
		die("capset");
}

/* caps copies the Cap* lines of /proc/self/status into out. */
static void caps(char *out, size_t n)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	out[0] = 0;
	if (!f)
		die("open status");
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "Cap", 3) && strlen(out) + strlen(line) < n)
			strcat(out, line);
	fclose(f);
}

static void compare(const char *who, const char *before)
{
	char now[1024];
	caps(now, sizeof(now));
	if (strcmp(before, now))
		fail("%s: capabilities were\n%s, are\n%s", who, before, now);
}

#define BIT(c) (1ULL << (c))

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	catch_usr2();
	if (getuid() != 0)
		die("caps.c runs as root");

	int pfd[2];
	if (pipe(pfd))
		die("pipe");
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		close(pfd[0]);
		if (prctl(PR_SET_KEEPCAPS, 1) || setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			die("become 65534");
		if (prctl(PR_SET_KEEPCAPS, 0))
			die("keepcaps off");
		unsigned long long nb = BIT(CAP_NET_BIND_SERVICE);
		setcaps(nb, nb, nb);
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
			die("ambient");
		char before[1024];
		caps(before, sizeof(before));
		while (!got_usr2)
			pause();
		compare("child (uid 65534)", before);
		int s = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
		inet_pton(AF_INET, "127.0.0.2", &a.sin_addr);
		if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)))
			if (errno != EADDRINUSE)
				fail("child: bind to port 80: %s (CAP_NET_BIND_SERVICE lost?)", strerror(errno));
		pass_failures(pfd[1]);
	}
	close(pfd[1]);

	if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE) || prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT))
		die("drop from the bounding set");
	/* SECBIT_NOROOT, SECBIT_NOROOT_LOCKED, SECBIT_KEEP_CAPS */
	const int secure = 1 << 0 | 1 << 1 | 1 << 4;
	if (prctl(PR_SET_SECUREBITS, secure))
		die("securebits");
	unsigned long long eff = BIT(CAP_CHOWN) | BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE), prm = eff | BIT(CAP_NET_RAW);
	setcaps(eff, prm, BIT(CAP_NET_BIND_SERVICE));
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		die("ambient");
	char before[1024];
	caps(before, sizeof(before));
	usleep(50000); /* the child has set itself up */

	printf("READY\n");
	while (!got_usr2)
		pause();
	compare("root", before);
	int now = prctl(PR_GET_SECUREBITS);
	if (now != secure)
		fail("root: securebits %#x, want %#x", now, secure);
	if (kill(kid, SIGUSR2))
		fail("signal the child: %s (CAP_KILL lost?)", strerror(errno));
	take_failures(pfd[0]);
	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("child ended with status %#x", st);
	return report();
}
