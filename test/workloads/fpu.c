// build:
/*
 * fpu.c - keeps known values live in FPU/vector REGISTERS across a checkpoint.
 *
 * Protocol: prints READY once set up, then spins until SIGUSR2; on SIGUSR2 it
 * prints PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * What is kept live and checked:
 *  - ymm0..ymm15 (AVX path, 256-bit patterns, so the upper 128-bit halves are
 *    tested too) or xmm0..xmm14 (SSE2 fallback, xmm15 is scratch there).
 *    An asm block loads the patterns and then spins ~50 ms comparing every
 *    register against memory copies (vptest against the pattern and against
 *    its complement: equal iff pattern is a subset of the register and the
 *    register is a subset of the pattern), so no scratch register is needed.
 *    Any mismatch is counted in memory.  Nearly all wall time is spent in
 *    that spin, so a checkpoint (and the restart) lands in it.
 *  - three 80-bit values pushed on the x87 register stack for the whole spin,
 *    popped and compared (bit for bit) after it.
 *  - the x87 control word (53-bit precision, round up) and MXCSR (round up,
 *    FTZ, DAZ), read back inside the asm after every spin, read back again at
 *    the end, and checked functionally (1/3 rounds up in both units).
 *  - the memory copies themselves are recomputed from the seed at the end.
 *
 * Build with -DTAMPER to make verification fail on purpose: the upper half of
 * ymm7 (xmm7 in the SSE path) is clobbered inside the spin after a few
 * iterations, which simulates a restorer that loses the YMM upper state.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "report.h"

#define SEED 0x5eed1234abcdULL
#define CW_WANT 0x0A7F      /* x87: all exceptions masked, PC=53 bit, RC=up */
#define MXCSR_WANT 0xDFC0   /* all masked, RC=up (0x4000), FTZ (0x8000), DAZ (0x40) */
#define MXCSR_FLAGS 0x003F  /* sticky exception flags, ignored in comparisons */


static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* 16 registers x 32 bytes, plus the bitwise complement */
static uint64_t pat[16][4] __attribute__((aligned(32)));
static uint64_t npat[16][4] __attribute__((aligned(32)));
/* three 80-bit x87 values, 16 bytes each (only 10 used) */
static unsigned char x87in[3][16] __attribute__((aligned(16)));
static unsigned char x87out[3][16] __attribute__((aligned(16)));

static void gen_patterns(uint64_t p[16][4], unsigned char x[3][16])
{
	uint64_t s = SEED;
	for (int r = 0; r < 16; r++)
		for (int w = 0; w < 4; w++)
			p[r][w] = splitmix(&s);
	for (int i = 0; i < 3; i++) {
		/* a normal extended value: explicit integer bit set, exponent 0x3FFF+k */
		uint64_t mant = splitmix(&s) | (1ULL << 63);
		uint16_t se = (uint16_t)((0x3FFF + (int)(splitmix(&s) % 64) - 32) |
					 (i == 1 ? 0x8000 : 0));
		memset(x[i], 0, 16);
		memcpy(x[i], &mant, 8);
		memcpy(x[i] + 8, &se, 2);
	}
}

static volatile uint64_t mismatches;   /* register != memory copy, counted by the asm */
static volatile uint64_t spins;        /* completed spin calls */
static uint16_t cw_in_spin;            /* x87 control word read inside the asm */
static uint16_t sw_in_spin;            /* x87 status word read inside the asm (before pops) */
static uint32_t mxcsr_in_spin;         /* MXCSR read inside the asm */
static uint64_t cw_bad, mxcsr_bad;     /* how many spins saw a wrong cw/mxcsr */
static uint16_t cw_bad_val;
static uint32_t mxcsr_bad_val;
static uint64_t x87_bad;
static unsigned char x87first_bad[3][16]; /* x87out of the first bad spin */
static int use_avx;
static uint64_t tamper;                /* non-zero: clobber a register (TAMPER builds only) */

#define LD(n)  "vmovdqa " #n "*32(%[p]), %%ymm" #n "\n\t"
#define CHK(n) "vptest " #n "*32(%[p]), %%ymm" #n "\n\t" \
	       "jnc 2f\n\t" \
	       "vptest " #n "*32(%[q]), %%ymm" #n "\n\t" \
	       "jnz 2f\n\t"

static void spin_avx(uint64_t count)
{
	__asm__ volatile(
		LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7)
		LD(8) LD(9) LD(10) LD(11) LD(12) LD(13) LD(14) LD(15)
		"fldt 0(%[xi])\n\t"
		"fldt 16(%[xi])\n\t"
		"fldt 32(%[xi])\n\t"
		"test %[t], %[t]\n\t"
		"jz 1f\n\t"
		"vperm2i128 $0x80, %%ymm7, %%ymm7, %%ymm7\n\t" /* zero upper half of ymm7 */
		"1:\n\t"
		CHK(0) CHK(1) CHK(2) CHK(3) CHK(4) CHK(5) CHK(6) CHK(7)
		CHK(8) CHK(9) CHK(10) CHK(11) CHK(12) CHK(13) CHK(14) CHK(15)
		"dec %[n]\n\t"
		"jnz 1b\n\t"
		"jmp 3f\n\t"
		"2:\n\t"
		"incq %[bad]\n\t"
		"dec %[n]\n\t"
		"jnz 1b\n\t"
		"3:\n\t"
		"fnstcw %[cw]\n\t"
		"fnstsw %[sw]\n\t"
		"stmxcsr %[mx]\n\t"
		"fstpt 32(%[xo])\n\t"
		"fstpt 16(%[xo])\n\t"
		"fstpt 0(%[xo])\n\t"
		"vzeroupper\n\t"
		: [n] "+r"(count), [bad] "+m"(mismatches),
		  [cw] "=m"(cw_in_spin), [sw] "=m"(sw_in_spin), [mx] "=m"(mxcsr_in_spin)
		: [p] "r"(pat), [q] "r"(npat), [xi] "r"(x87in), [xo] "r"(x87out),
		  [t] "r"(tamper)
		: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
		  "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
		  "cc", "memory");
}

/* SSE2 fallback: xmm0..xmm14 hold the low 128 bits of the patterns, xmm15 is scratch */
#define SLD(n)  "movdqa " #n "*32(%[p]), %%xmm" #n "\n\t"
#define SCHK(n) "movdqa %%xmm" #n ", %%xmm15\n\t" \
		"pcmpeqd " #n "*32(%[p]), %%xmm15\n\t" \
		"pmovmskb %%xmm15, %%eax\n\t" \
		"cmp $0xffff, %%eax\n\t" \
		"jne 2f\n\t"

static void spin_sse(uint64_t count)
{
	__asm__ volatile(
		SLD(0) SLD(1) SLD(2) SLD(3) SLD(4) SLD(5) SLD(6) SLD(7)
		SLD(8) SLD(9) SLD(10) SLD(11) SLD(12) SLD(13) SLD(14)
		"fldt 0(%[xi])\n\t"
		"fldt 16(%[xi])\n\t"
		"fldt 32(%[xi])\n\t"
		"test %[t], %[t]\n\t"
		"jz 1f\n\t"
		"pxor %%xmm7, %%xmm7\n\t"
		"1:\n\t"
		SCHK(0) SCHK(1) SCHK(2) SCHK(3) SCHK(4) SCHK(5) SCHK(6) SCHK(7)
		SCHK(8) SCHK(9) SCHK(10) SCHK(11) SCHK(12) SCHK(13) SCHK(14)
		"dec %[n]\n\t"
		"jnz 1b\n\t"
		"jmp 3f\n\t"
		"2:\n\t"
		"incq %[bad]\n\t"
		"dec %[n]\n\t"
		"jnz 1b\n\t"
		"3:\n\t"
		"fnstcw %[cw]\n\t"
		"fnstsw %[sw]\n\t"
		"stmxcsr %[mx]\n\t"
		"fstpt 32(%[xo])\n\t"
		"fstpt 16(%[xo])\n\t"
		"fstpt 0(%[xo])\n\t"
		: [n] "+r"(count), [bad] "+m"(mismatches),
		  [cw] "=m"(cw_in_spin), [sw] "=m"(sw_in_spin), [mx] "=m"(mxcsr_in_spin)
		: [p] "r"(pat), [xi] "r"(x87in), [xo] "r"(x87out), [t] "r"(tamper)
		: "eax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
		  "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
		  "cc", "memory");
}

static void spin(uint64_t count)
{
	if (use_avx)
		spin_avx(count);
	else
		spin_sse(count);
	spins++;
	if ((cw_in_spin & 0x0F3F) != (CW_WANT & 0x0F3F)) {
		cw_bad++;
		cw_bad_val = cw_in_spin;
	}
	if ((mxcsr_in_spin & ~MXCSR_FLAGS) != MXCSR_WANT) {
		mxcsr_bad++;
		mxcsr_bad_val = mxcsr_in_spin;
	}
	if (memcmp(x87out[0], x87in[0], 10) || memcmp(x87out[1], x87in[1], 10) ||
	    memcmp(x87out[2], x87in[2], 10)) {
		if (!x87_bad)
			memcpy(x87first_bad, x87out, sizeof(x87out));
		x87_bad++;
	}
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t dbits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);

	catch_usr2(); /* no SA_RESTART */

	__builtin_cpu_init();
	use_avx = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx");

	gen_patterns(pat, x87in);
	for (int r = 0; r < 16; r++)
		for (int w = 0; w < 4; w++)
			npat[r][w] = ~pat[r][w];

	/* non-default FP environment */
	uint16_t cw = CW_WANT;
	__asm__ volatile("fldcw %0" : : "m"(cw));
	uint32_t mx = MXCSR_WANT;
	__asm__ volatile("ldmxcsr %0" : : "m"(mx));

	/* calibrate: one spin() call should take ~50 ms */
	uint64_t cal = 20000;
	double t0 = 0, dt = 0;
	for (int i = 0; i < 3; i++) { /* first runs are cold; keep the last */
		t0 = now();
		spin(cal);
		dt = now() - t0;
	}
	if (dt < 1e-6)
		dt = 1e-6;
	uint64_t count = (uint64_t)(cal * 0.050 / dt);
	if (count < 1000)
		count = 1000;

	printf("fpu: %s path, %llu checks per spin\n", use_avx ? "AVX ymm0-15" : "SSE xmm0-14",
	       (unsigned long long)count);
	printf("READY\n");
	fflush(stdout);

	while (!got_usr2) {
#ifdef TAMPER
		tamper = spins >= 3;
#endif
		spin(count);
	}

	/* --- verification --- */
	if (mismatches)
		fail("%s register != memory copy in %llu checks (of %llu spins)",
		     use_avx ? "ymm" : "xmm", (unsigned long long)mismatches,
		     (unsigned long long)spins);

	/* memory copies recomputed independently from the seed */
	static uint64_t epat[16][4];
	static unsigned char ex87[3][16];
	gen_patterns(epat, ex87);
	for (int r = 0; r < 16; r++)
		for (int w = 0; w < 4; w++) {
			if (pat[r][w] != epat[r][w])
				fail("pattern[%d][%d] expected %016llx actual %016llx", r, w,
				     (unsigned long long)epat[r][w], (unsigned long long)pat[r][w]);
			if (npat[r][w] != ~epat[r][w])
				fail("npattern[%d][%d] expected %016llx actual %016llx", r, w,
				     (unsigned long long)~epat[r][w], (unsigned long long)npat[r][w]);
		}
	for (int i = 0; i < 3; i++)
		if (memcmp(x87in[i], ex87[i], 10))
			fail("x87 input %d changed in memory", i);

	if (x87_bad) {
		uint64_t em, am;
		uint16_t ee, ae;
		for (int i = 0; i < 3; i++) {
			memcpy(&em, ex87[i], 8); memcpy(&ee, ex87[i] + 8, 2);
			memcpy(&am, x87first_bad[i], 8); memcpy(&ae, x87first_bad[i] + 8, 2);
			if (em != am || ee != ae) {
				fail("x87 st value %d (in %llu spins): expected %04x:%016llx actual %04x:%016llx",
				     i, (unsigned long long)x87_bad, ee, (unsigned long long)em, ae,
				     (unsigned long long)am);
				break;
			}
		}
		if (!failbuf[0])
			fail("x87 values differed in %llu spins", (unsigned long long)x87_bad);
	}
	if (((sw_in_spin >> 11) & 7) != 5)
		/* three values pushed on an empty stack: TOP = 8-3 = 5 */
		fail("x87 TOP inside spin expected 5 actual %d", (sw_in_spin >> 11) & 7);
	if (cw_bad)
		fail("x87 control word inside spin expected %04x actual %04x (%llu spins)",
		     CW_WANT, cw_bad_val, (unsigned long long)cw_bad);
	if (mxcsr_bad)
		fail("MXCSR inside spin expected %04x actual %04x (%llu spins)",
		     MXCSR_WANT, mxcsr_bad_val, (unsigned long long)mxcsr_bad);

	uint16_t cw2, sw2;
	uint32_t mx2;
	__asm__ volatile("fnstcw %0" : "=m"(cw2));
	__asm__ volatile("fnstsw %0" : "=m"(sw2));
	__asm__ volatile("stmxcsr %0" : "=m"(mx2));
	if ((cw2 & 0x0F3F) != (CW_WANT & 0x0F3F))
		fail("x87 control word expected %04x actual %04x", CW_WANT, cw2);
	if ((mx2 & ~MXCSR_FLAGS) != MXCSR_WANT)
		fail("MXCSR expected %04x actual %04x", MXCSR_WANT, mx2);
	if (((sw2 >> 11) & 7) != 0)
		fail("x87 TOP at end expected 0 actual %d", (sw2 >> 11) & 7);

	/* functional checks: 1/3 must round up in SSE (double) and x87 (53-bit, up) */
	volatile double one = 1.0, three = 3.0;
	double q = one / three;
	if (dbits(q) != 0x3FD5555555555556ULL)
		fail("SSE 1/3 (round-up) expected 3fd5555555555556 actual %016llx",
		     (unsigned long long)dbits(q));
	volatile long double lone = 1.0L, lthree = 3.0L;
	long double lq = lone / lthree;
	/* 53-bit precision, rounded up: mantissa aaaaaaaaaaaab000? exact: 0xAAAAAAAAAAAAB000 */
	unsigned char lb[16] = {0};
	memcpy(lb, (const void *)&lq, 10);
	uint64_t lm;
	uint16_t le;
	memcpy(&lm, lb, 8);
	memcpy(&le, lb + 8, 2);
	if (lm != 0xAAAAAAAAAAAAB000ULL || le != 0x3FFD)
		fail("x87 1/3 (PC53, round-up) expected 3ffd:aaaaaaaaaaaab000 actual %04x:%016llx",
		     le, (unsigned long long)lm);
	if (spins < 2)
		fail("only %llu spins completed", (unsigned long long)spins);

	return report();
}
