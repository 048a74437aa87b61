/*
 * ckpt.h - self-checkpoint for C programs, with the ckpt tool.
 *
 * Header only, libc only: include it and call
 *
 *	long id = ckpt_self("/var/tmp/job.img", 0);
 *	if (id > 0)        -> the image is written; this program carries on
 *	else if (id == 0)  -> this program was restarted from an image
 *	                      (`ckpt restart /var/tmp/job.img`)
 *	else               -> no checkpoint; errno says what kind of failure,
 *	                      and the reason went to stderr
 *
 * The call returns twice in the life of a program, like fork() or
 * setjmp(): once in the running program, with the checkpoint id (a
 * positive number, also printed by `ckpt inspect`), and once in every
 * program restarted from that image, with 0.
 *
 * How it works: ckpt_self runs the ckpt binary ($CKPT if set, else "ckpt"
 * on $PATH) as a child,
 *
 *	ckpt checkpoint --self-tid TID --self-fd N -o IMAGE PID
 *
 * with the write end of a pipe as its descriptor N, and blocks the calling
 * thread in read() on the read end. ckpt freezes the whole process (every
 * thread, and its children but ckpt), writes the image, lets it run again
 * and writes "ckpt-id ID" (or "ckpt-error MESSAGE") into the pipe. In the
 * image the calling thread's read() has returned 0 and the pipe has no
 * writer, so a restarted program reads end of file at once; the child ckpt
 * is not in the image, so waitpid() finds no child (ECHILD). That pair is
 * what "restarted" means.
 *
 * Requirements and limits:
 * - ckpt must be allowed to ptrace the program (root, or the same user
 *   with kernel.yama.ptrace_scope <= 1; ckpt_self calls PR_SET_PTRACER for
 *   its child) and everything the program holds must be checkpointable
 *   (see ckpt's docs/features.md); otherwise the call fails and the
 *   program carries on.
 * - ckpt_self flushes stdio (fflush(NULL)) first: output still buffered
 *   would be in the image and be written again by every restarted program.
 * - The call blocks for as long as the checkpoint takes; other threads run
 *   until ckpt freezes them, and run on afterwards.
 * - A program that reaps every child itself (waitpid(-1) in a SIGCHLD
 *   handler, or SIGCHLD ignored) takes a ckpt that died without a word
 *   (killed) for a restart: ckpt_self cannot tell them apart then.
 * - A restarted program gets its original PID back, so the image can only
 *   be restarted once the program that wrote it has ended.
 * - Linux x86-64 only, like ckpt.
 */
#ifndef CKPT_H
#define CKPT_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

/* Flags for ckpt_self. */
#define CKPT_COMPRESS 0x1 /* write a zstd-compressed image */

extern char **environ;

/*
 * ckpt_self_msg is ckpt_self with the failure reason returned in msg
 * (msglen bytes, NUL-terminated, may be truncated) instead of printed on
 * stderr. msg may be NULL: then nothing is printed.
 *
 * Returns the checkpoint id (> 0) in the running program, 0 in a
 * restarted one, -1 on failure with errno set:
 *	EINVAL   image_path is NULL or empty, or flags has unknown bits
 *	ENOENT   no ckpt binary ($CKPT, or ckpt on $PATH)
 *	EIO      ckpt ran but did not checkpoint (msg says why)
 *	other    from pipe(2), posix_spawn(3) or waitpid(2)
 */
static inline long ckpt_self_msg(const char *image_path, int flags, char *msg, size_t msglen)
{
	char tid[24], pid[24], fdarg[24], answer[4096];
	const char *bin = getenv("CKPT");
	int p[2], err, status, child_fd;
	size_t got = 0;
	pid_t child, w;

	if (msg && msglen)
		msg[0] = '\0';
	if (!image_path || !*image_path || (flags & ~CKPT_COMPRESS)) {
		if (msg && msglen)
			snprintf(msg, msglen, "ckpt_self: no image path, or unknown flags %#x", flags);
		errno = EINVAL;
		return -1;
	}
	if (!bin || !*bin)
		bin = "ckpt";
	fflush(NULL);
	/* pipe2 by number: its libc wrapper wants _GNU_SOURCE. */
	if (syscall(SYS_pipe2, p, O_CLOEXEC) < 0)
		return -1;
	/* ckpt gets the write end as descriptor 3 (4 if the pipe's write end
	 * is 3 already, as dup2 onto itself would keep close-on-exec). */
	child_fd = p[1] == 3 ? 4 : 3;
	snprintf(tid, sizeof tid, "%ld", (long)syscall(SYS_gettid));
	snprintf(pid, sizeof pid, "%ld", (long)getpid());
	snprintf(fdarg, sizeof fdarg, "%d", child_fd);
	{
		char *argv[] = {(char *)bin, "checkpoint", "--self-tid", tid, "--self-fd", fdarg,
				"-o", (char *)image_path, pid, NULL, NULL};
		posix_spawn_file_actions_t fa;

		if (flags & CKPT_COMPRESS) {
			argv[9] = argv[8];
			argv[8] = "--compress";
		}
		err = posix_spawn_file_actions_init(&fa);
		if (!err)
			err = posix_spawn_file_actions_adddup2(&fa, p[1], child_fd);
		if (!err)
			err = strchr(bin, '/') ? posix_spawn(&child, bin, &fa, NULL, argv, environ)
					       : posix_spawnp(&child, bin, &fa, NULL, argv, environ);
		posix_spawn_file_actions_destroy(&fa);
	}
	/* Only ckpt may hold the write end: the restarted program must read
	 * end of file. */
	close(p[1]);
	if (err) {
		close(p[0]);
		if (msg && msglen)
			snprintf(msg, msglen, "ckpt_self: run %s: %s (set CKPT to the ckpt binary or put it on PATH)", bin, strerror(err));
		errno = err;
		return -1;
	}
	prctl(PR_SET_PTRACER, (unsigned long)child, 0, 0, 0);

	/* Here the thread blocks until ckpt answers; a restarted program
	 * starts here, reading end of file. */
	for (;;) {
		ssize_t n = read(p[0], answer + got, sizeof answer - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == sizeof answer - 1)
			break;
	}
	answer[got] = '\0';
	close(p[0]);
	do
		w = waitpid(child, &status, 0);
	while (w < 0 && errno == EINTR);

	if (w < 0 && errno == ECHILD && got == 0)
		return 0; /* restarted: no ckpt child, no answer */
	if (strncmp(answer, "ckpt-id ", 8) == 0) {
		long long id = strtoll(answer + 8, NULL, 10);
		if (id > 0 && id <= LONG_MAX)
			return (long)id;
	}
	if (msg && msglen) {
		if (strncmp(answer, "ckpt-error ", 11) == 0) {
			size_t n = strcspn(answer + 11, "\n");
			int k = snprintf(msg, msglen, "ckpt_self: ");

			if (k > 0 && (size_t)k < msglen) {
				if (n > msglen - 1 - (size_t)k)
					n = msglen - 1 - (size_t)k;
				memcpy(msg + k, answer + 11, n);
				msg[k + n] = '\0';
			}
		} else if (w < 0) {
			snprintf(msg, msglen, "ckpt_self: wait for ckpt %ld: %s", (long)child, strerror(errno));
		} else if (WIFSIGNALED(status)) {
			snprintf(msg, msglen, "ckpt_self: ckpt was killed by signal %d", WTERMSIG(status));
		} else {
			snprintf(msg, msglen, "ckpt_self: ckpt exited with status %d (its message is on stderr)", WEXITSTATUS(status));
		}
	}
	errno = EIO;
	return -1;
}

/*
 * ckpt_self writes an image of the calling process to image_path and
 * returns its checkpoint id (> 0); in a process restarted from that image
 * the same call returns 0. On failure it prints why on stderr and returns
 * -1 with errno set (see ckpt_self_msg). flags: 0 or CKPT_COMPRESS.
 */
static inline long ckpt_self(const char *image_path, int flags)
{
	char msg[1024];
	long r = ckpt_self_msg(image_path, flags, msg, sizeof msg);

	if (r < 0) {
		int e = errno;
		fprintf(stderr, "%s\n", msg);
		errno = e;
	}
	return r;
}

#endif /* CKPT_H */
