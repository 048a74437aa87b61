// build:
/*
 * signals.c - signal state across a checkpoint.
 *
 * Protocol: prints READY once set up, then sleeps in 10 ms steps until
 * SIGUSR2; on SIGUSR2 it prints PASS (exit 0) or "FAIL: ..." (exit 1) as its
 * last line.  All differences are listed, the first one first.
 *
 * State set up and verified:
 *  - blocked mask = exactly {SIGUSR1, SIGRTMIN+1}
 *  - pending: SIGUSR1 (sigqueue, value 42), SIGRTMIN+1 twice (values 7, 8)
 *  - SIGHUP handler, SA_SIGINFO|SA_RESTART|SA_ONSTACK, sa_mask {SIGINT}
 *  - alternate signal stack of 64 KiB
 *  - SIGPIPE ignored
 *  - ITIMER_REAL with a 50 ms interval; SIGALRM (SA_RESTART) counts ticks
 *  - SIGUSR2 handler (no SA_RESTART) sets a flag
 * Then it raises SIGHUP (must run on the alternate stack, with SIGINT and
 * SIGHUP blocked and SS_ONSTACK reported) and collects the queued signals
 * with sigtimedwait (so a lost signal fails instead of hanging).
 *
 * To see the FAIL path without tampering with the code, send the process an
 * extra queued SIGRTMIN+1 from outside (e.g. with sigqueue(1)/kill -s) before
 * SIGUSR2: the pending check and the final "nothing left pending" check fail.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "report.h"

#define ALTSTACK_SIZE (64 * 1024)

static volatile sig_atomic_t alrm_ticks;

static volatile sig_atomic_t hup_ran;
static volatile int hup_signo, hup_code;
static volatile uintptr_t hup_local_addr;
static volatile int hup_ss_flags = -1;
static volatile int hup_int_blocked = -1, hup_hup_blocked = -1;

static void on_alrm(int sig) { (void)sig; alrm_ticks++; }

static void on_hup(int sig, siginfo_t *si, void *uc)
{
	volatile int local = sig;
	(void)uc;
	hup_local_addr = (uintptr_t)&local;
	hup_signo = si->si_signo;
	hup_code = si->si_code;
	stack_t cur;
	if (sigaltstack(NULL, &cur) == 0)
		hup_ss_flags = cur.ss_flags;
	sigset_t m;
	if (sigprocmask(SIG_BLOCK, NULL, &m) == 0) {
		hup_int_blocked = sigismember(&m, SIGINT);
		hup_hup_blocked = sigismember(&m, SIGHUP);
	}
	hup_ran++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_for(double secs)
{
	double end = now() + secs;
	while (now() < end) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL); /* EINTR from SIGALRM is fine */
	}
}

/* signal numbers in a set, as text */
static const char *setstr(const sigset_t *s)
{
	static char buf[4][512];
	static int k;
	char *b = buf[k++ & 3];
	size_t l = 0;
	b[0] = 0;
	for (int i = 1; i < _NSIG; i++)
		if (sigismember(s, i) == 1)
			l += snprintf(b + l, 512 - l, "%s%d", l ? "," : "", i);
	if (!l)
		snprintf(b, 512, "none");
	return b;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const int RT1 = SIGRTMIN + 1;
	catch_usr2(); /* no SA_RESTART, which the check below expects */
	struct sigaction sa;

	/* block SIGUSR1 and SIGRTMIN+1, then queue signals to ourselves */
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, RT1);
	if (sigprocmask(SIG_SETMASK, &block, NULL))
		die("sigprocmask");
	union sigval v;
	v.sival_int = 42;
	if (sigqueue(getpid(), SIGUSR1, v))
		die("sigqueue SIGUSR1");
	v.sival_int = 7;
	if (sigqueue(getpid(), RT1, v))
		die("sigqueue RT1 7");
	v.sival_int = 8;
	if (sigqueue(getpid(), RT1, v))
		die("sigqueue RT1 8");

	/* alternate stack */
	void *alt = malloc(ALTSTACK_SIZE);
	if (!alt)
		die("malloc");
	memset(alt, 0xa5, ALTSTACK_SIZE);
	stack_t ss = {.ss_sp = alt, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");

	/* SIGHUP handler */
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_hup;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGINT);
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
	if (sigaction(SIGHUP, &sa, NULL))
		die("sigaction SIGHUP");

	/* SIGPIPE ignored */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGPIPE, &sa, NULL))
		die("sigaction SIGPIPE");
	/* SIGTRAP ignored too: a restorer that raises SIGTRAP must not reset it */
	if (sigaction(SIGTRAP, &sa, NULL))
		die("sigaction SIGTRAP");

	/* SIGALRM tick counter + 50 ms interval timer */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alrm;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGALRM, &sa, NULL))
		die("sigaction SIGALRM");
	struct itimerval it = {.it_interval = {0, 50000}, .it_value = {0, 50000}};
	if (setitimer(ITIMER_REAL, &it, NULL))
		die("setitimer");

	printf("signals: altstack %p size %d\n", alt, ALTSTACK_SIZE);
	printf("READY\n");
	fflush(stdout);

	while (!got_usr2) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}

	/* --- verification; expected values are literals/recomputed, not the setup variables --- */

	/* 1. blocked mask is exactly {SIGUSR1, SIGRTMIN+1} */
	sigset_t cur, want;
	sigemptyset(&want);
	sigaddset(&want, SIGUSR1);
	sigaddset(&want, SIGRTMIN + 1);
	if (sigprocmask(SIG_BLOCK, NULL, &cur))
		fail("sigprocmask readback: %s", strerror(errno));
	else
		for (int i = 1; i < _NSIG; i++)
			if (sigismember(&cur, i) != sigismember(&want, i)) {
				fail("blocked mask expected {%s} actual {%s}", setstr(&want), setstr(&cur));
				break;
			}

	/* 2. pending */
	sigset_t pend;
	if (sigpending(&pend))
		fail("sigpending: %s", strerror(errno));
	else
		for (int i = 1; i < _NSIG; i++)
			if (sigismember(&pend, i) != sigismember(&want, i)) {
				fail("pending set expected {%s} actual {%s}", setstr(&want), setstr(&pend));
				break;
			}

	/* 3. SIGHUP disposition */
	struct sigaction o;
	if (sigaction(SIGHUP, NULL, &o))
		fail("sigaction SIGHUP readback: %s", strerror(errno));
	else {
		if ((void *)o.sa_sigaction != (void *)on_hup)
			fail("SIGHUP handler expected %p actual %p", (void *)on_hup,
			     (void *)o.sa_sigaction);
		int want_fl = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
		/* glibc adds SA_RESTORER; nothing else may be set */
		if ((o.sa_flags & ~0x04000000) != want_fl)
			fail("SIGHUP flags expected %#x (+SA_RESTORER) actual %#x", want_fl,
			     (unsigned)o.sa_flags);
		sigset_t wm;
		sigemptyset(&wm);
		sigaddset(&wm, SIGINT);
		for (int i = 1; i < _NSIG; i++)
			if (sigismember(&o.sa_mask, i) != sigismember(&wm, i)) {
				fail("SIGHUP sa_mask expected {%s} actual {%s}", setstr(&wm),
				     setstr(&o.sa_mask));
				break;
			}
	}

	/* 4. SIGPIPE ignored */
	if (sigaction(SIGPIPE, NULL, &o))
		fail("sigaction SIGPIPE readback: %s", strerror(errno));
	else if (o.sa_handler != SIG_IGN)
		fail("SIGPIPE handler expected SIG_IGN actual %p", (void *)o.sa_handler);
	if (sigaction(SIGTRAP, NULL, &o))
		fail("sigaction SIGTRAP readback: %s", strerror(errno));
	else if (o.sa_handler != SIG_IGN)
		fail("SIGTRAP handler expected SIG_IGN actual %p", (void *)o.sa_handler);

	/* also: SIGUSR2 and SIGALRM handlers */
	if (sigaction(SIGALRM, NULL, &o) == 0 &&
	    (o.sa_handler != on_alrm || !(o.sa_flags & SA_RESTART)))
		fail("SIGALRM disposition expected %p/SA_RESTART actual %p/%#x", (void *)on_alrm,
		     (void *)o.sa_handler, (unsigned)o.sa_flags);
	if (sigaction(SIGUSR2, NULL, &o) == 0 &&
	    (o.sa_handler != on_usr2 || (o.sa_flags & (SA_RESTART | SA_SIGINFO | SA_ONSTACK))))
		fail("SIGUSR2 disposition expected %p/no flags actual %p/%#x", (void *)on_usr2,
		     (void *)o.sa_handler, (unsigned)o.sa_flags);

	/* 5. sigaltstack */
	stack_t oss;
	if (sigaltstack(NULL, &oss))
		fail("sigaltstack readback: %s", strerror(errno));
	else if (oss.ss_sp != alt || oss.ss_size != ALTSTACK_SIZE || oss.ss_flags != 0)
		fail("sigaltstack expected sp=%p size=%d flags=0 actual sp=%p size=%zu flags=%d",
		     alt, ALTSTACK_SIZE, oss.ss_sp, oss.ss_size, oss.ss_flags);

	/* 6. interval timer */
	struct itimerval git;
	if (getitimer(ITIMER_REAL, &git))
		fail("getitimer: %s", strerror(errno));
	else {
		if (git.it_interval.tv_sec != 0 || git.it_interval.tv_usec != 50000)
			fail("ITIMER_REAL interval expected 0.050000 actual %ld.%06ld",
			     (long)git.it_interval.tv_sec, (long)git.it_interval.tv_usec);
		if (git.it_value.tv_sec != 0 || git.it_value.tv_usec > 50000 ||
		    (git.it_value.tv_sec == 0 && git.it_value.tv_usec == 0))
			fail("ITIMER_REAL value expected in (0, 0.050000] actual %ld.%06ld",
			     (long)git.it_value.tv_sec, (long)git.it_value.tv_usec);
	}

	/* 7. the timer still fires: ~4 ticks expected in 200 ms */
	int t0 = alrm_ticks;
	sleep_for(0.200);
	int dt = alrm_ticks - t0;
	if (dt < 2)
		fail("SIGALRM ticks in 200 ms expected >=2 (about 4) actual %d (total %d)", dt,
		     (int)alrm_ticks);

	/* 8. SIGHUP runs on the alternate stack */
	if (raise(SIGHUP))
		fail("raise(SIGHUP): %s", strerror(errno));
	if (hup_ran != 1)
		fail("SIGHUP handler runs expected 1 actual %d", (int)hup_ran);
	else {
		uintptr_t lo = (uintptr_t)alt, hi = lo + ALTSTACK_SIZE;
		if (hup_local_addr < lo || hup_local_addr >= hi)
			fail("SIGHUP handler local at %#lx, expected on altstack [%#lx,%#lx)",
			     (unsigned long)hup_local_addr, (unsigned long)lo, (unsigned long)hi);
		if (hup_signo != SIGHUP)
			fail("SIGHUP si_signo expected %d actual %d", SIGHUP, hup_signo);
		if (hup_code != SI_TKILL)
			fail("SIGHUP si_code expected %d (SI_TKILL) actual %d", SI_TKILL, hup_code);
		if (hup_ss_flags != SS_ONSTACK)
			fail("sigaltstack ss_flags in handler expected %d (SS_ONSTACK) actual %d",
			     SS_ONSTACK, hup_ss_flags);
		if (hup_int_blocked != 1 || hup_hup_blocked != 1)
			fail("in SIGHUP handler expected SIGINT and SIGHUP blocked, actual %d/%d",
			     hup_int_blocked, hup_hup_blocked);
	}

	/* 9. queued signals, values and order */
	struct timespec zero = {0, 0};
	siginfo_t si;
	sigset_t w;
	sigemptyset(&w);
	sigaddset(&w, SIGUSR1);
	memset(&si, 0, sizeof(si));
	int s = sigtimedwait(&w, &si, &zero);
	if (s != SIGUSR1)
		fail("sigwaitinfo {SIGUSR1} expected %d actual %d (%s)", SIGUSR1, s,
		     s < 0 ? strerror(errno) : "");
	else {
		if (si.si_value.sival_int != 42)
			fail("SIGUSR1 sival_int expected 42 actual %d", si.si_value.sival_int);
		if (si.si_code != SI_QUEUE)
			fail("SIGUSR1 si_code expected %d (SI_QUEUE) actual %d", SI_QUEUE, si.si_code);
		if (si.si_pid != getpid())
			fail("SIGUSR1 si_pid expected %d actual %d", (int)getpid(), (int)si.si_pid);
		if (si.si_uid != getuid())
			fail("SIGUSR1 si_uid expected %d actual %d", (int)getuid(), (int)si.si_uid);
	}
	sigemptyset(&w);
	sigaddset(&w, SIGRTMIN + 1);
	for (int k = 0; k < 2; k++) {
		int want_v = 7 + k;
		memset(&si, 0, sizeof(si));
		s = sigtimedwait(&w, &si, &zero);
		if (s != SIGRTMIN + 1) {
			fail("sigwaitinfo {SIGRTMIN+1} #%d expected %d actual %d (%s)", k + 1,
			     SIGRTMIN + 1, s, s < 0 ? strerror(errno) : "");
			break;
		}
		if (si.si_value.sival_int != want_v)
			fail("SIGRTMIN+1 #%d sival_int expected %d actual %d", k + 1, want_v,
			     si.si_value.sival_int);
		if (si.si_code != SI_QUEUE)
			fail("SIGRTMIN+1 #%d si_code expected %d (SI_QUEUE) actual %d", k + 1,
			     SI_QUEUE, si.si_code);
		if (si.si_pid != getpid())
			fail("SIGRTMIN+1 #%d si_pid expected %d actual %d", k + 1, (int)getpid(),
			     (int)si.si_pid);
	}

	/* 10. nothing else pending (e.g. no duplicated queue entries) */
	if (sigpending(&pend) == 0) {
		sigdelset(&pend, SIGALRM); /* may race in, unblocked anyway */
		for (int i = 1; i < _NSIG; i++)
			if (sigismember(&pend, i) == 1) {
				fail("after sigwaitinfo still pending: {%s}", setstr(&pend));
				break;
			}
	}

	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);

	return report();
}
