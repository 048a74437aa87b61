// build: -mamx-tile -O2
/*
 * amx.c - AMX tile registers and their permission across a checkpoint.
 *
 * Protocol: prints "no AMX" (the CPU or kernel has none; the harness
 * skips) or READY once set up, then waits for SIGUSR2; then prints PASS
 * (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up: the process asks for AMX tile data (ARCH_REQ_XCOMP_PERM, as
 * every AMX program must) and loads tile 0 with a pattern, so that its
 * XSAVE state holds tile data in use.
 * After the checkpoint: the permission is still there (ARCH_GET_XCOMP_PERM)
 * and tile 0 holds the pattern.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>

#include "report.h"

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

struct tilecfg {
	uint8_t palette, start_row, reserved[14];
	uint16_t colsb[16];
	uint8_t rows[16];
} __attribute__((aligned(64)));

static uint8_t in[16][64], out[16][64];

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	unsigned a, b, c, d;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) ||
	    syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
		printf("no AMX\n");
		return 0;
	}
	catch_usr2();
	struct tilecfg cfg = {.palette = 1};
	cfg.colsb[0] = 64;
	cfg.rows[0] = 16;
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < 64; j++)
			in[i][j] = (uint8_t)(i * 64 + j * 7 + 3);
	_tile_loadconfig(&cfg);
	_tile_loadd(0, in, 64);

	printf("READY\n");
	while (!got_usr2)
		pause();

	uint64_t perm = 0;
	if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) || !(perm & (1ull << XFEATURE_XTILEDATA)))
		fail("no AMX permission any more (%#llx)", (unsigned long long)perm);
	_tile_stored(0, out, 64);
	_tile_release();
	if (memcmp(in, out, sizeof(in)))
		fail("tile 0 lost its data");
	return report();
}
