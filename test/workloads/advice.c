// build:
// advice: memory areas with madvise advice (huge pages, no huge pages,
// don't dump, don't fork, wipe on fork, KSM mergeable), one mapped
// MAP_NORESERVE and one locked with mlock, each holding a pattern. On
// SIGUSR2 it checks the patterns, that smaps still shows each area's flag,
// that the locked area is counted in VmLck, and, in a child it forks, that
// the don't-fork area is not there and the wipe-on-fork area reads as
// zeros; then it reports PASS or FAIL. A kernel without KSM refuses the
// mergeable advice: that area is then left out.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define AREA (4UL << 20)

static volatile sig_atomic_t verify;
static void on_usr2(int sig) { (void)sig; verify = 1; }

#define NORESERVE -1 // mapped MAP_NORESERVE instead of advised
#define MLOCK -2     // locked with mlock instead of advised

struct area {
	const char *flag; // in smaps VmFlags
	int advice;       // or NORESERVE, MLOCK
	char *p;
	int skip; // the kernel refused the advice (no KSM)
};

static struct area areas[] = {
	{"hg", MADV_HUGEPAGE, 0, 0},  {"nh", MADV_NOHUGEPAGE, 0, 0}, {"dd", MADV_DONTDUMP, 0, 0},
	{"dc", MADV_DONTFORK, 0, 0},  {"wf", MADV_WIPEONFORK, 0, 0}, {"nr", NORESERVE, 0, 0},
	{"mg", MADV_MERGEABLE, 0, 0}, {"lo", MLOCK, 0, 0},
};

// lockedKB returns VmLck of /proc/self/status, in kB.
static long lockedKB(void) {
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1) break;
	if (f) fclose(f);
	return kb;
}
#define N (int)(sizeof areas / sizeof areas[0])

// hasFlag reports whether the smaps entry of the area starting at p shows
// VmFlags flag.
static int hasFlag(char *p, const char *flag) {
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f) return 0;
	char line[512];
	int in = 0, found = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long start, end;
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			in = start <= (unsigned long)p && (unsigned long)p < end;
			continue;
		}
		if (in && strncmp(line, "VmFlags:", 8) == 0) {
			char want[8];
			snprintf(want, sizeof want, " %s", flag);
			for (char *s = line + 8; (s = strstr(s, want)); s += 3)
				if (s[3] == ' ' || s[3] == '\n') found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	for (int i = 0; i < N; i++) {
		int flags = MAP_PRIVATE | MAP_ANONYMOUS | (areas[i].advice == NORESERVE ? MAP_NORESERVE : 0);
		areas[i].p = mmap(NULL, AREA, PROT_READ | PROT_WRITE, flags, -1, 0);
		if (areas[i].p == MAP_FAILED) { printf("FAIL: mmap\n"); return 1; }
		if (areas[i].advice == MLOCK && mlock(areas[i].p, AREA) != 0) {
			printf("FAIL: mlock\n");
			return 1;
		}
		if (areas[i].advice >= 0 && madvise(areas[i].p, AREA, areas[i].advice) != 0) {
			if (areas[i].advice == MADV_MERGEABLE) {
				areas[i].skip = 1;
				continue;
			}
			printf("FAIL: madvise %s\n", areas[i].flag);
			return 1;
		}
		for (size_t k = 0; k < AREA; k += 4096) areas[i].p[k] = (char)(i + 1 + k / 4096);
		if (!hasFlag(areas[i].p, areas[i].flag)) { printf("FAIL: %s not in smaps before the checkpoint\n", areas[i].flag); return 1; }
	}
	printf("READY\n");
	while (!verify) usleep(5000);

	for (int i = 0; i < N; i++) {
		if (areas[i].skip) continue;
		for (size_t k = 0; k < AREA; k += 4096)
			if (areas[i].p[k] != (char)(i + 1 + k / 4096)) { printf("FAIL: area %s page %zu\n", areas[i].flag, k / 4096); return 1; }
		if (!hasFlag(areas[i].p, areas[i].flag)) { printf("FAIL: area %s lost its flag\n", areas[i].flag); return 1; }
	}
	if (lockedKB() < (long)(AREA >> 10)) { printf("FAIL: VmLck %ld kB, want at least %lu\n", lockedKB(), AREA >> 10); return 1; }
	pid_t c = fork();
	if (c < 0) { printf("FAIL: fork\n"); return 1; }
	if (c == 0) {
		// Don't fork: not mapped here (smaps has no entry for it).
		FILE *f = fopen("/proc/self/maps", "r");
		char line[512], want[32];
		snprintf(want, sizeof want, "%lx-", (unsigned long)areas[3].p);
		int mapped = 0;
		while (f && fgets(line, sizeof line, f))
			if (strncmp(line, want, strlen(want)) == 0) mapped = 1;
		if (mapped) _exit(2);
		for (size_t k = 0; k < AREA; k += 4096)
			if (areas[4].p[k] != 0) _exit(3); // wiped
		_exit(0);
	}
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		printf("FAIL: child of the restored process: status %#x (2: don't-fork area mapped, 3: wipe-on-fork area not wiped)\n", st);
		return 1;
	}
	printf("PASS\n");
	return 0;
}
