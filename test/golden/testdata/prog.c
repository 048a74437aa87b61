// build: gcc -Os -static -nostdlib -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none -no-pie -Wl,--build-id=none -Wl,-z,noseparate-code -Wl,-z,norelro -s -o prog prog.c
//
// prog: the program inside the golden images (test/golden). It has no libc,
// no threads and, while it is checkpointed, no open descriptor, so that its
// image restarts on any x86-64 machine that has this exact binary (restart
// maps it by path and checks its size).
//
// It becomes a session leader, closes every descriptor, fills memory of
// several kinds with a pattern (bss, initialised data, stack, an anonymous
// mapping with a read-only page), appends READY to ./log and then sleeps in
// 2 ms steps, counting. When a file ./go appears it checks everything (and
// that its PID did not change), appends "PASS <count>" or "FAIL: <why>" to
// ./log and exits with 0 or 1.
typedef unsigned long u64;

enum {
	SYS_write = 1, SYS_open = 2, SYS_close = 3, SYS_mmap = 9, SYS_mprotect = 10,
	SYS_nanosleep = 35, SYS_getpid = 39, SYS_exit = 60, SYS_access = 21, SYS_setsid = 112, SYS_close_range = 436,
};

static long sys(long n, long a, long b, long c, long d, long e, long f) {
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return r;
}

#define BSS_WORDS 8192 /* 64 KiB */
#define MAP_PAGES 3

static u64 bss[BSS_WORDS];
static u64 data[512] = {1, 2, 3}; /* initialised: file-backed until written */

static u64 next(u64 *s) {
	u64 x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static u64 slen(const char *s) {
	u64 n = 0;
	while (s[n]) n++;
	return n;
}

static void logline(const char *a, u64 num, int with_num) {
	char buf[128], *p = buf;
	for (const char *s = a; *s && p < buf + 80; s++) *p++ = *s;
	if (with_num) {
		char d[24];
		int k = 0;
		do d[k++] = (char)('0' + num % 10); while ((num /= 10) && k < 24);
		*p++ = ' ';
		while (k) *p++ = d[--k];
	}
	*p++ = '\n';
	long fd = sys(SYS_open, (long)"log", 01 | 0100 | 02000 /* O_WRONLY|O_CREAT|O_APPEND */, 0644, 0, 0, 0);
	if (fd < 0) return;
	sys(SYS_write, fd, (long)buf, p - buf, 0, 0, 0);
	sys(SYS_close, fd, 0, 0, 0, 0, 0);
}

static int fail(const char *why) {
	logline(why, 0, 0);
	return 1;
}

static int run(void) {
	sys(SYS_setsid, 0, 0, 0, 0, 0, 0);
	sys(SYS_close_range, 0, ~0U, 0, 0, 0, 0); /* whatever the parent left open */
	long pid = sys(SYS_getpid, 0, 0, 0, 0, 0, 0);

	u64 seed = 0x9e3779b97f4a7c15UL;
	for (int i = 0; i < BSS_WORDS; i++) bss[i] = next(&seed);
	for (int i = 0; i < 512; i++) data[i] = data[i] * 7 + (u64)i;
	volatile unsigned char stack[512];
	for (int i = 0; i < 512; i++) stack[i] = (unsigned char)(i * 5);
	long m = sys(SYS_mmap, 0, MAP_PAGES * 4096, 3 /* RW */, 0x22 /* MAP_PRIVATE|MAP_ANONYMOUS */, -1, 0);
	if (m < 0 && m > -4096) return fail("FAIL: mmap");
	unsigned char *map = (unsigned char *)m;
	for (int i = 0; i < MAP_PAGES * 4096; i++) map[i] = (unsigned char)(i % 251);
	if (sys(SYS_mprotect, m + 4096, 4096, 1 /* R */, 0, 0, 0) != 0) return fail("FAIL: mprotect");

	logline("READY", 0, 0);
	u64 count = 0;
	struct { long sec, nsec; } ts = {0, 2000000};
	while (sys(SYS_access, (long)"go", 0, 0, 0, 0, 0) != 0) {
		sys(SYS_nanosleep, (long)&ts, 0, 0, 0, 0, 0);
		count++;
	}

	if (sys(SYS_getpid, 0, 0, 0, 0, 0, 0) != pid) return fail("FAIL: pid changed");
	seed = 0x9e3779b97f4a7c15UL;
	for (int i = 0; i < BSS_WORDS; i++)
		if (bss[i] != next(&seed)) return fail("FAIL: bss");
	u64 init[3] = {1, 2, 3};
	for (int i = 0; i < 512; i++)
		if (data[i] != (i < 3 ? init[i] : 0) * 7 + (u64)i) return fail("FAIL: data");
	for (int i = 0; i < 512; i++)
		if (stack[i] != (unsigned char)(i * 5)) return fail("FAIL: stack");
	for (int i = 0; i < MAP_PAGES * 4096; i++)
		if (map[i] != (unsigned char)(i % 251)) return fail("FAIL: mapping");
	if (slen("READY") != 5) return fail("FAIL: rodata");
	logline("PASS", count, 1);
	return 0;
}

void __attribute__((noreturn, used)) start_c(void) {
	sys(SYS_exit, run(), 0, 0, 0, 0, 0);
	__builtin_unreachable();
}

/* The kernel enters with rsp 16-byte aligned; a call makes the frame ABI
 * conformant. */
__asm__(".globl _start\n_start:\n\txor %ebp, %ebp\n\tand $-16, %rsp\n\tcall start_c\n\thlt\n");
